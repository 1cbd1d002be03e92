"""One parser per MovieLens file layout; each reads its files into plain frames and ends in ``build_corpus``.

Everything is vectorised (pyarrow reads, pandas string ops, numpy sorts) so ML-25M/32M parse in seconds and
in a few GB. A line that cannot be parsed raises :class:`DataError` naming the file and line: the fast
multi-threaded read does not know line numbers, so only on failure the file is read again, single-threaded,
to find the first bad line (bad files are rare, fast reads are the common case).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from recarena.data.corpus import Corpus, RatingScale, build_corpus
from recarena.errors import DataError

#: Bump when a parser's output changes: it is part of the parsed-corpus cache key.
PARSER_VERSION = 1
FIVE_STARS = RatingScale(1.0, 5.0, 1.0)
HALF_STARS = RatingScale(0.5, 5.0, 0.5)
#: Genre flag columns of ML-100K's ``u.item``, in ``u.genre`` order (used when ``u.genre`` is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
GENOME_TOP_K = 20
CSV_OPTIONAL = ("tags.csv", "genome-scores.csv", "genome-tags.csv")
RATING_TYPES = {"user_id": pa.int32(), "movie_id": pa.int32(), "rating": pa.float32(), "timestamp": pa.int64()}
_NULLS = {"", "#n/a", "#n/a n/a", "#na", "-1.#ind", "-1.#qnan", "-nan", "1.#ind", "1.#qnan", "n/a", "na", "null", "nan"}


def read_delimited(
    path: Path, types: Mapping[str, pa.DataType | None], *, sep: str = ",", header: bool = True,
    encoding: str = "utf8", quoted: bool = True, multiline: bool = False, options: Mapping[str, str] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Read the ``types`` columns of a delimited file (type None = inferred) with pyarrow.

    Without a header, ``types`` names every column in file order. A multi-character ``sep`` (ML-1M's ``::``)
    is replaced in memory by a tab, since pyarrow only splits on one character. ``options`` maps a column to
    the config option naming it, so a missing column's error says what to set.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    source: str | io.BytesIO = str(path)
    if len(sep) > 1:
        source, sep = io.BytesIO(path.read_bytes().replace(sep.encode(encoding), b"\t")), "\t"
    names = list(types)
    read = pacsv.ReadOptions(encoding=encoding, column_names=None if header else names, block_size=1 << 22)
    parse = pacsv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False, newlines_in_values=multiline)
    if header:
        _check_columns(path, source, encoding, sep, names, options or {})
    convert = pacsv.ConvertOptions(column_types={k: v for k, v in types.items() if v}, include_columns=names)
    try:
        table = pacsv.read_csv(_rewind(source), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as err:
        raise _locate_error(path, source, read, parse, types, header, err) from err
    return table.to_pandas()


def _rewind(source: str | io.BytesIO) -> str | io.BytesIO:
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source


def _check_columns(path: Path, source, encoding: str, sep: str, names: Sequence[str], options: Mapping[str, str]) -> None:
    """A missing column is a config error (wrong file or column option), named before any parsing."""
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[: 1 << 16]
    else:
        with pa.input_stream(source, compression="detect") as f:  # also reads .gz/.bz2 custom files
            head = f.read(1 << 16)
    line = head.split(b"\n", 1)[0].decode(encoding, errors="replace").lstrip("\ufeff").rstrip("\r")
    present = next(csv.reader([line], delimiter=sep), [])
    for col in names:
        if col not in present:
            fix = f"set {options[col]}=<column name>" if col in options else "is it the right file?"
            if other := _separator_that_fits(line, sep, names):  # the columns are there, split by another character
                fix = f"its fields are separated by {other!r}: set data.sep={other!r}"
            raise DataError(f"{path}: no column {col!r} (columns: {', '.join(present)}); {fix}")


def _separator_that_fits(header: str, sep: str, names: Sequence[str]) -> str | None:
    """Another common separator under which the header holds every wanted column (a ``;`` or tab file read with
    the default ``,``)."""
    for other in (",", ";", "\t", "|"):
        if other != sep and set(names) <= set(next(csv.reader([header], delimiter=other), [])):
            return other
    return None


def _locate_error(path, source, read, parse, types, header: bool, err: Exception) -> DataError:
    """Find the first bad line: a row with the wrong number of fields, else a non-numeric number."""
    bad: list = []

    def on_invalid(row) -> str:
        bad.append(row)
        return "error"

    slow_read = pacsv.ReadOptions(encoding=read.encoding, column_names=read.column_names, use_threads=False)
    slow_parse = pacsv.ParseOptions(delimiter=parse.delimiter, quote_char=parse.quote_char,
                                    newlines_in_values=parse.newlines_in_values, invalid_row_handler=on_invalid)  # fmt: skip
    as_text = pacsv.ConvertOptions(column_types=dict.fromkeys(types, pa.string()), include_columns=list(types))
    try:
        table = pacsv.read_csv(_rewind(source), read_options=slow_read, parse_options=slow_parse, convert_options=as_text)
    except pa.ArrowInvalid:
        table = None
    if bad:
        row = bad[0]
        return DataError(
            f"{path}, line {row.number}: expected {row.expected_columns} fields, found {row.actual_columns} "
            f"({row.text[:200]!r}). The file is corrupted: fix or delete that line, or fetch the file again."
        )
    if table is not None:
        for col, kind in types.items():
            if kind is None or not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                continue
            text = table.column(col).to_pandas().astype("string").str.strip()
            number = pd.to_numeric(text, errors="coerce")
            wrong = number.isna() & ~text.str.lower().isin(_NULLS) & text.notna()
            if pa.types.is_integer(kind):
                wrong |= number.notna() & (number != np.floor(number))
            if wrong.any():
                row = int(np.flatnonzero(wrong.to_numpy())[0])
                return DataError(
                    f"{path}, line {row + (2 if header else 1)}: column {col!r} holds {text.iloc[row]!r}, "
                    f"not {'an integer' if pa.types.is_integer(kind) else 'a number'}. Fix or delete that line."
                )
    return DataError(f"{path}: cannot be parsed ({err}).")


def split_title(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Title (1995)"`` -> (``"Title"``, 1995); the year is the last ``(dddd)``, NA when there is none.

    Text after the year stays in the title (ML-100K's ``"... (1995) (V)"`` -> ``"... (V)"``).
    """
    raw = raw.astype("string").str.strip()
    parts = raw.str.extract(r"^(?P<head>.*)\((?P<year>\d{4})\)(?P<tail>.*)$")
    title = (parts["head"].str.strip() + " " + parts["tail"].str.strip()).str.strip()
    title = title.where(parts["year"].notna(), raw).fillna("")
    return title, pd.to_numeric(parts["year"], errors="coerce").astype("Int64")


def _items(movie_id: pd.Series, raw_title: pd.Series, genres: pd.Series) -> pd.DataFrame:
    title, year = split_title(raw_title)
    genres = genres.astype("string").fillna("(no genres listed)")
    return pd.DataFrame({"movie_id": movie_id, "title": title, "year": year, "genres": genres})


def _flags_to_genres(flags: np.ndarray, names: Sequence[str]) -> pd.Series:
    """Multi-hot genre flags -> ``|``-joined names (one vectorised pass per genre, not per movie)."""
    out = np.full(len(flags), "", dtype=object)
    for j, name in enumerate(names):
        out = out + np.where(flags[:, j] > 0, name + "|", "")
    joined = pd.Series(out, dtype="string").str.rstrip("|")
    return joined.where(joined != "", "(no genres listed)")


def _no_empty(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if frame.empty:
        raise DataError(f"{path}: holds no ratings (no rows after its header, if it has one).")
    return frame


# ---------------------------------------------------------------------------------------------- ML-100K
_BAR, _TAB = {"sep": "|", "header": False, "quoted": False}, {"sep": "\t", "quoted": False}


def parse_ml100k(root: Path, name: str = "ml-100k", scale: RatingScale = FIVE_STARS) -> Corpus:
    """ML-100K in either layout: GroupLens' ``u.data``... or RecBole's ``ml-100k.inter``... (the PyPI copy)."""
    root = Path(root)
    if (root / "u.data").is_file():
        return parse_ml100k_official(root, name, scale)
    if (root / "ml-100k.inter").is_file():
        return parse_ml100k_recbole(root, name, scale)
    raise DataError(f"{root}: holds neither u.data (GroupLens layout) nor ml-100k.inter (RecBole layout).")


def parse_ml100k_official(root: Path, name: str = "ml-100k", scale: RatingScale = FIVE_STARS) -> Corpus:
    root = Path(root)
    ratings = _no_empty(read_delimited(root / "u.data", RATING_TYPES, sep="\t", header=False, quoted=False), root)
    genre_names: Sequence[str] = ML100K_GENRES
    if (root / "u.genre").is_file():
        table = read_delimited(root / "u.genre", {"genre": pa.string(), "i": pa.int32()}, **_BAR)
        genre_names = table.sort_values("i")["genre"].tolist()
    flag_cols = [f"genre_{j}" for j in range(len(genre_names))]
    item_types = {"movie_id": pa.int32(), "raw_title": pa.string(), "release": pa.string()}
    item_types |= {"video": pa.string(), "url": pa.string()} | dict.fromkeys(flag_cols, pa.int8())
    raw = read_delimited(root / "u.item", item_types, **_BAR, encoding="latin1")
    genres = _flags_to_genres(raw[flag_cols].fillna(0).to_numpy(), genre_names)
    user_types = {"user_id": pa.int32(), "age": pa.int32(), "gender": pa.string(), "occupation": pa.string()}
    users = read_delimited(root / "u.user", user_types | {"zip_code": pa.string()}, **_BAR)
    corpus = build_corpus(
        name, ratings, _items(raw["movie_id"], raw["raw_title"], genres), scale,
        source=str(root / "u.data"), users=users, line_offset=1,
    )  # fmt: skip
    corpus.extra["layout"] = "grouplens"
    return corpus


def parse_ml100k_recbole(root: Path, name: str = "ml-100k", scale: RatingScale = FIVE_STARS) -> Corpus:
    """RecBole's atomic files hold the same data; undo its title/year split so the Corpus matches GroupLens'.

    RecBole split ``"Title (1995)"`` on the last ``(...)``, so ``"... (1995) (V)"`` became year ``"V"``, and it
    misspelt the one yearless movie ``"unkonwn"``: re-join title and year and split them our way.
    """
    root = Path(root)
    inter_types = {"user_id:token": pa.int32(), "item_id:token": pa.int32(), "rating:float": pa.float32()}
    inter = read_delimited(root / "ml-100k.inter", inter_types | {"timestamp:float": pa.float64()}, **_TAB)
    ratings = _no_empty(inter.set_axis(list(RATING_TYPES), axis=1), root)
    item_types = {"item_id:token": pa.int32(), "movie_title:token_seq": pa.string()}
    item_types |= {"release_year:token": pa.string(), "class:token_seq": pa.string()}
    raw = read_delimited(root / "ml-100k.item", item_types, **_TAB)
    title = raw["movie_title:token_seq"].astype("string").str.strip().replace("unkonwn", "unknown")
    year = raw["release_year:token"].astype("string").str.strip().replace("unkonwn", pd.NA)
    raw_title = (title + " (" + year + ")").fillna(title)
    genres = raw["class:token_seq"].astype("string").str.strip().str.replace(r"\s+", "|", regex=True)
    user_types = {"user_id:token": pa.int32(), "age:token": pa.int32(), "gender:token": pa.string()}
    user_types |= {"occupation:token": pa.string(), "zip_code:token": pa.string()}
    users = read_delimited(root / "ml-100k.user", user_types, **_TAB)
    users.columns = [c.split(":")[0] for c in users.columns]
    corpus = build_corpus(
        name, ratings, _items(raw["item_id:token"], raw_title, genres), scale,
        source=str(root / "ml-100k.inter"), users=users, line_offset=2,
    )  # fmt: skip
    corpus.extra["layout"] = "recbole"
    return corpus


# ---------------------------------------------------------------------------------------------- ML-1M
def parse_ml1m(root: Path, name: str = "ml-1m", scale: RatingScale = FIVE_STARS) -> Corpus:
    root = Path(root)
    kw = {"sep": "::", "header": False, "quoted": False, "encoding": "latin1"}
    ratings = _no_empty(read_delimited(root / "ratings.dat", RATING_TYPES, **kw), root)
    movie_types = {"movie_id": pa.int32(), "raw_title": pa.string(), "genres": pa.string()}
    movies = read_delimited(root / "movies.dat", movie_types, **kw)
    user_types = {"user_id": pa.int32(), "gender": pa.string(), "age": pa.int32(), "occupation": pa.int32()}
    users = read_delimited(root / "users.dat", user_types | {"zip_code": pa.string()}, **kw)
    items = _items(movies["movie_id"], movies["raw_title"], movies["genres"])
    return build_corpus(name, ratings, items, scale, source=str(root / "ratings.dat"), users=users, line_offset=1)


# ---------------------------------------------------------------------------------------------- CSV releases
def parse_csv_release(root: Path, name: str = "ml-latest-small", scale: RatingScale = HALF_STARS) -> Corpus:
    """ml-latest(-small), ml-25m, ml-32m (and the synthetic data, written in the same layout)."""
    root = Path(root)
    types = {"userId": pa.int32(), "movieId": pa.int32(), "rating": pa.float32(), "timestamp": pa.int64()}
    ratings = _no_empty(read_delimited(root / "ratings.csv", types).set_axis(list(RATING_TYPES), axis=1), root)
    movie_types = {"movieId": pa.int32(), "title": pa.string(), "genres": pa.string()}
    movies = read_delimited(root / "movies.csv", movie_types, multiline=True)
    items = _items(movies["movieId"], movies["title"], movies["genres"])
    tags = read_tags(root / "tags.csv") if (root / "tags.csv").is_file() else None
    genome = None
    if (root / "genome-scores.csv").is_file() and (root / "genome-tags.csv").is_file():
        genome = read_genome(root / "genome-scores.csv", root / "genome-tags.csv")
    return build_corpus(
        name, ratings, items, scale, source=str(root / "ratings.csv"), tags=tags, genome=genome, line_offset=2
    )


def read_tags(path: Path) -> pd.DataFrame:
    """User tags -> one row per application: ``movie_id``, ``user_id``, the lower-cased stripped ``tag`` and its
    ``timestamp``, so that a split can keep the applications its held-out ratings have not reached
    (:mod:`recarena.data.side_info`)."""
    schema = {"userId": pa.int64(), "movieId": pa.int32(), "tag": pa.string(), "timestamp": pa.int64()}
    raw = read_delimited(path, schema, multiline=True)
    tag = raw["tag"].astype("string").str.strip().str.lower()
    frame = pd.DataFrame({"movie_id": raw["movieId"], "user_id": raw["userId"], "tag": tag,
                          "timestamp": raw["timestamp"]})  # fmt: skip
    frame = frame[frame[["movie_id", "user_id", "timestamp"]].notna().all(axis=1) & tag.notna() & (tag != "")]
    frame = frame.astype({"movie_id": "int64", "user_id": "int64", "timestamp": "int64"})
    return frame.sort_values(["movie_id", "timestamp"], kind="stable").reset_index(drop=True)


def read_genome(scores_path: Path, tags_path: Path, top_k: int = GENOME_TOP_K) -> pd.DataFrame:
    """Tag genome cut to the ``top_k`` most relevant tags per movie (all 1128 would be 15M rows for ML-25M)."""
    scores = read_delimited(scores_path, {"movieId": pa.int32(), "tagId": pa.int32(), "relevance": pa.float32()})
    scores = scores.dropna()
    movie = scores["movieId"].to_numpy(dtype=np.int64)
    rel = np.clip(scores["relevance"].to_numpy(dtype=np.float64), 0.0, 1.0)
    # One int64 sort instead of a two-key lexsort: movie id in the high bits, (1 - relevance) in 24 low bits.
    key = (movie << 25) | np.round((1.0 - rel) * (1 << 24)).astype(np.int64)
    order = np.argsort(key, kind="stable")
    first = np.flatnonzero(np.r_[True, movie[order][1:] != movie[order][:-1]])  # each movie's first row
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    top = order[rank < top_k]
    names = read_delimited(tags_path, {"tagId": pa.int32(), "tag": pa.string()}).set_index("tagId")["tag"]
    tag = names.reindex(scores["tagId"].to_numpy()[top]).astype("string").to_numpy()
    return pd.DataFrame({"movie_id": movie[top], "tag": tag, "relevance": rel[top].astype(np.float32)})


# ---------------------------------------------------------------------------------------------- custom
def parse_custom(
    path: Path, *, items_path: Path | None = None, sep: str = ",", user_col: str = "userId",
    item_col: str = "movieId", rating_col: str | None = "rating", timestamp_col: str | None = "timestamp",
    title_col: str = "title", genres_col: str | None = "genres", genres_sep: str = "|",
    scale: RatingScale = HALF_STARS, name: str = "custom",
) -> Corpus:  # fmt: skip
    """A user's own ratings file (and optional items file); column names come from ``conf/data/custom.yaml``.

    Ids may be any text (``alice``, ``B00X4``): ids that are not all integers are numbered 1..n in sorted order,
    and the text is kept (users: ``user_table.user_key``, so ``recommend --user alice`` works; items: the title
    when no items file gives one).

    ``rating_col=None``: implicit feedback, every row an interaction. Each is given the scale's top rating, so
    every ranking loss takes it as a positive and every held-out one is relevant (whatever the thresholds); the
    losses that fit ratings are refused at start-up (:func:`recarena.checks.check_implicit`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ratings file not found; set data.path=<your ratings file>.")
    cols = {user_col: pa.string(), item_col: pa.string()}
    opts = {user_col: "data.user_col", item_col: "data.item_col"}
    for column, kind, option in ((rating_col, pa.float32(), "data.rating_col"),
                                 (timestamp_col, None, "data.timestamp_col")):  # fmt: skip
        if column:
            cols[column], opts[column] = kind, option
    raw = _no_empty(read_delimited(path, cols, sep=sep, options=opts), path)
    rating = raw[rating_col] if rating_col else np.full(len(raw), scale.high, dtype=np.float32)
    user_id, user_keys = _id_codes(raw[user_col])
    item_keys = _item_keys(raw[item_col], items_path, item_col, sep)
    ratings = pd.DataFrame({"user_id": user_id, "movie_id": _coded(raw[item_col], item_keys), "rating": rating})
    # No timestamp column: the file order is the time order (0, 1, 2, ... so time-based splits still work).
    ratings["timestamp"] = _epoch_seconds(raw[timestamp_col], path, timestamp_col) if timestamp_col else np.arange(len(raw))
    if items_path is None:
        ids = pd.Series(ratings["movie_id"].dropna().unique()).astype("int64")
        titles = ids.astype(str) if item_keys is None else ids.map(pd.Series(item_keys.index, index=item_keys.values))
        items = pd.DataFrame({"movie_id": ids, "title": titles, "year": pd.NA, "genres": "(no genres listed)"})
    else:
        icols = {item_col: pa.string(), title_col: pa.string()} | ({genres_col: pa.string()} if genres_col else {})
        iopts = {item_col: "data.item_col", title_col: "data.title_col", genres_col: "data.genres_col"}
        raw_items = read_delimited(items_path, icols, sep=sep, multiline=sep == ",", options=iopts)
        genres = raw_items[genres_col].astype("string").str.replace(genres_sep, "|", regex=False) if genres_col else None
        movie_ids = _coded(raw_items[item_col], item_keys)
        items = _items(movie_ids, raw_items[title_col], pd.Series(genres, index=raw_items.index))
    users = None if user_keys is None else pd.DataFrame({"user_id": user_keys.to_numpy(), "user_key": user_keys.index})
    corpus = build_corpus(name, _no_empty(ratings, path), items, scale, source=str(path), users=users, line_offset=2)
    corpus.extra["file_order_time"] = not timestamp_col
    corpus.extra["implicit"] = not rating_col
    return corpus


def _id_codes(values: pd.Series, extra: pd.Series | None = None) -> tuple[pd.Series, pd.Series | None]:
    """Integer ids as they are; any other text numbered 1..n in sorted order of the distinct texts of ``values``
    (and ``extra``): the codes, and the text -> code map (None for integer ids)."""
    text = values.astype("string").str.strip()
    every = text if extra is None else pd.concat([text, extra.astype("string").str.strip()])
    if every.dropna().str.fullmatch(r"-?\d+").all():
        return pd.to_numeric(text, errors="coerce").astype("Int64"), None
    keys = pd.Series(np.arange(1, every.dropna().nunique() + 1, dtype=np.int64), index=np.sort(every.dropna().unique()))
    return text.map(keys).astype("Int64"), keys


def _item_keys(values: pd.Series, items_path: Path | None, item_col: str, sep: str) -> pd.Series | None:
    """The item text -> code map of :func:`_id_codes` over the ratings' and the items file's ids (None: integers)."""
    extra = None
    if items_path is not None:
        if not Path(items_path).is_file():
            raise DataError(f"{items_path}: items file not found; fix data.items_path or set it to null.")
        extra = read_delimited(Path(items_path), {item_col: pa.string()}, sep=sep, multiline=sep == ",",
                               options={item_col: "data.item_col"})[item_col]  # fmt: skip
    return _id_codes(values, extra)[1]


def _coded(values: pd.Series, keys: pd.Series | None) -> pd.Series:
    """Ids as integers: through ``keys`` (text ids), else parsed."""
    if keys is None:
        return pd.to_numeric(values.astype("string").str.strip(), errors="coerce").astype("Int64")
    return values.astype("string").str.strip().map(keys).astype("Int64")


def _epoch_seconds(col: pd.Series, path: Path, name: str) -> pd.Series:
    """Numbers are epoch seconds; dates/times (which pyarrow infers) are converted to them."""
    if pd.api.types.is_numeric_dtype(col):
        return col
    if pd.api.types.is_datetime64_any_dtype(col):  # NaT -> NaN: dropped and counted
        return (col - pd.Timestamp(0, tz=col.dt.tz)) // pd.Timedelta(seconds=1)
    raise DataError(
        f"{path}: column {name!r} is neither epoch seconds nor a date; fix the column or set "
        f"data.timestamp_col=null to use the file order."
    )
