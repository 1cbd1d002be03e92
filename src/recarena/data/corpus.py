"""The Corpus: the one in-memory form of any MovieLens release (or of a user's own ratings).

Every parser ends in :func:`build_corpus`, which does the cleaning all releases share (drop incomplete rows,
keep the latest of duplicate ratings, check the rating scale, index users and items contiguously), so a
release-specific parser only has to read its layout into plain pandas frames.

A Corpus is cached as one directory (``ratings.npz`` + ``items.parquet`` [+ ``tags.parquet``,
``users.parquet``] + ``meta.json``) written to a temporary directory first and renamed into place, so an
interrupted write never leaves a half cache that a later run would read back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recarena.atomic import staging_dir
from recarena.errors import DataError
from recarena.titles import display_titles

log = logging.getLogger(__name__)

#: Bump when the on-disk layout or the cleaning rules change: older caches are then rebuilt, never misread.
CORPUS_FORMAT_VERSION = 2




@dataclass(frozen=True)
class RatingScale:
    """The rating scale of a release: ratings outside [low, high] are an error."""

    low: float
    high: float
    step: float

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high, "step": self.step}


@dataclass
class Corpus:
    """Ratings plus item (and optional user) side information, indexed 0..n-1.

    Attributes:
        name: release name, e.g. ``ml-100k``.
        users, items: (N,) int32 contiguous indices of each rating.
        ratings: (N,) float32.
        timestamps: (N,) int64 seconds since the epoch.
        user_ids: (n_users,) int64 original user id of each user index.
        item_table: one row per item index: ``movie_id`` (int64), ``title`` (str, without the year),
            ``year`` (nullable Int64), ``genres`` (str, ``|``-joined, as in MovieLens CSVs).
        genre_names: the genre vocabulary, in column order of :attr:`genres`.
        genres: (n_items, n_genres) uint8 multi-hot.
        tags: optional user tags, one row per application: ``item`` (int32 index), ``user_id`` (the tagging
            user's original id, who may have no rating), ``tag`` (str, lower-cased), ``timestamp``; models read
            them through :func:`recarena.data.side_info.visible_tags`, which keeps what a split leaves in the past.
        genome: optional tag genome, the most relevant genome tags per item: ``item``, ``tag``,
            ``relevance`` (float32 in [0, 1]).
        user_table: optional frame, one row per user index (e.g. age, gender, occupation of ML-100K).
        scale: the release's rating scale.
        n_dropped: rows dropped while cleaning (missing fields, unknown ids), reported at the start of a run.
        n_duplicates: duplicate (user, item) ratings removed (the latest is kept).
    """

    name: str
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_ids: np.ndarray
    item_table: pd.DataFrame
    genre_names: list[str]
    genres: np.ndarray
    scale: RatingScale
    tags: pd.DataFrame | None = None
    genome: pd.DataFrame | None = None
    user_table: pd.DataFrame | None = None
    n_dropped: int = 0
    n_duplicates: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_table)

    @property
    def n_ratings(self) -> int:
        return len(self.ratings)

    @property
    def item_ids(self) -> np.ndarray:
        return self.item_table["movie_id"].to_numpy()

    def display_titles(self) -> pd.Series:
        """``"Title (Year)"`` as MovieLens writes it; the title alone when the year is unknown."""
        return display_titles(self.item_table)

    def subset(self, rows: np.ndarray, name: str | None = None) -> Corpus:
        """Keep only the given rating rows and re-index users and items contiguously.

        Users and items left without ratings are dropped, so indices stay dense (curation relies on it).
        """
        users, items = self.users[rows], self.items[rows]
        kept_users, new_users = np.unique(users, return_inverse=True)
        kept_items, new_items = np.unique(items, return_inverse=True)
        remap = np.full(self.n_items, -1, dtype=np.int64)
        remap[kept_items] = np.arange(len(kept_items))
        return Corpus(
            name=name or self.name,
            users=new_users.astype(np.int32),
            items=new_items.astype(np.int32),
            ratings=self.ratings[rows],
            timestamps=self.timestamps[rows],
            user_ids=self.user_ids[kept_users],
            item_table=self.item_table.iloc[kept_items].reset_index(drop=True),
            genre_names=list(self.genre_names),
            genres=self.genres[kept_items],
            scale=self.scale,
            tags=_remap_items(self.tags, remap),
            genome=_remap_items(self.genome, remap),
            user_table=None if self.user_table is None else self.user_table.iloc[kept_users].reset_index(drop=True),
            n_dropped=self.n_dropped,
            n_duplicates=self.n_duplicates,
            extra=dict(self.extra),
        )

    # ------------------------------------------------------------------ cache
    def save(self, path: str | Path) -> None:
        """Write atomically: everything goes to a sibling temp dir that is renamed over ``path``."""
        path = Path(path)
        with staging_dir(path) as tmp:
            np.savez(
                tmp / "ratings.npz",
                users=self.users,
                items=self.items,
                ratings=self.ratings,
                timestamps=self.timestamps,
                user_ids=self.user_ids,
                genres=self.genres,
            )
            self.item_table.to_parquet(tmp / "items.parquet", index=False)
            for fname, frame in _optional_frames(self).items():
                if frame is not None:
                    frame.to_parquet(tmp / fname, index=False)
            meta = {
                "format_version": CORPUS_FORMAT_VERSION,
                "name": self.name,
                "genre_names": self.genre_names,
                "scale": self.scale.to_dict(),
                "n_dropped": self.n_dropped,
                "n_duplicates": self.n_duplicates,
                "extra": self.extra,
            }
            # meta.json is written last: its presence marks a complete cache.
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Corpus:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format_version") != CORPUS_FORMAT_VERSION:
            raise DataError(
                f"{path} holds a corpus cache of format {meta.get('format_version')}, this version reads "
                f"{CORPUS_FORMAT_VERSION}: delete the directory and it will be rebuilt."
            )
        arrays = np.load(path / "ratings.npz")
        frames = {f: pd.read_parquet(path / f) if (path / f).exists() else None for f in _OPTIONAL_FRAMES}
        return cls(
            name=meta["name"],
            users=arrays["users"],
            items=arrays["items"],
            ratings=arrays["ratings"],
            timestamps=arrays["timestamps"],
            user_ids=arrays["user_ids"],
            item_table=pd.read_parquet(path / "items.parquet"),
            genre_names=list(meta["genre_names"]),
            genres=arrays["genres"],
            scale=RatingScale(**meta["scale"]),
            tags=frames["tags.parquet"],
            genome=frames["genome.parquet"],
            user_table=frames["users.parquet"],
            n_dropped=meta["n_dropped"],
            n_duplicates=meta["n_duplicates"],
            extra=meta.get("extra", {}),
        )

    @staticmethod
    def is_cached(path: str | Path) -> bool:
        return (Path(path) / "meta.json").exists()


_OPTIONAL_FRAMES = ("tags.parquet", "genome.parquet", "users.parquet")


def _optional_frames(corpus: Corpus) -> dict[str, pd.DataFrame | None]:
    return dict(zip(_OPTIONAL_FRAMES, (corpus.tags, corpus.genome, corpus.user_table), strict=True))


def _remap_items(frame: pd.DataFrame | None, remap: np.ndarray) -> pd.DataFrame | None:
    """Re-index the ``item`` column of a side table after a subset; rows of dropped items go."""
    if frame is None:
        return None
    frame = frame.assign(item=remap[frame["item"].to_numpy()])
    return frame[frame["item"] >= 0].astype({"item": "int32"}).reset_index(drop=True)


def _index_items(frame: pd.DataFrame | None, item_ids: np.ndarray) -> pd.DataFrame | None:
    """Replace ``movie_id`` by the contiguous ``item`` index; rows of movies without ratings go."""
    if frame is None or not len(frame):
        return None
    pos = pd.Series(np.arange(len(item_ids), dtype=np.int32), index=item_ids)
    frame = frame[frame["movie_id"].isin(pos.index)]
    item = pos.reindex(frame["movie_id"]).to_numpy()
    return frame.drop(columns="movie_id").assign(item=item)[["item", *frame.columns.drop("movie_id")]].reset_index(
        drop=True
    )


def _dense_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values and each value's index among them: ``np.unique(return_inverse=True)``, but
    hashing the rows and sorting only the uniques (seconds saved on 25M ratings)."""
    codes, uniques = pd.factorize(values)
    order = np.argsort(uniques)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[codes]


def _latest_of_pairs(users: np.ndarray, items: np.ndarray, n_items: int, ts: np.ndarray) -> np.ndarray:
    """File-order rows left after dropping duplicate (user, item) ratings, keeping the latest of each pair
    (largest timestamp, then last in the file).

    One stable int64 sort finds the duplicated pairs; only their rows get the (pair, timestamp, row) lexsort,
    which on all rows of ML-25M would take ~15 s.
    """
    pair = users.astype(np.int64) * n_items + items
    by_pair = np.argsort(pair, kind="stable")
    same = pair[by_pair][1:] == pair[by_pair][:-1]
    if not same.any():
        return np.arange(len(pair))
    in_dup = np.zeros(len(pair), dtype=bool)
    in_dup[1:] |= same
    in_dup[:-1] |= same
    dup_rows = by_pair[in_dup]
    dup_rows = dup_rows[np.lexsort((dup_rows, ts[dup_rows], pair[dup_rows]))]
    dup_pair = pair[dup_rows]
    keep = np.ones(len(pair), dtype=bool)
    keep[dup_rows] = False
    keep[dup_rows[np.r_[dup_pair[1:] != dup_pair[:-1], True]]] = True
    return np.flatnonzero(keep)


def build_corpus(
    name: str,
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    scale: RatingScale,
    *,
    source: str,
    tags: pd.DataFrame | None = None,
    genome: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    line_offset: int = 2,
) -> Corpus:
    """Clean raw frames and index them into a :class:`Corpus`.

    Args:
        ratings: columns ``user_id``, ``movie_id``, ``rating``, ``timestamp`` in file order (the row order
            breaks timestamp ties in the temporal split, so it must be preserved).
        items: columns ``movie_id``, ``title`` (without year), ``year`` (nullable), ``genres`` (``|``-joined).
        tags: optional user tag applications: ``movie_id``, ``user_id``, ``tag``, ``timestamp``.
        genome: optional ``movie_id``, ``tag``, ``relevance`` (already cut to the top tags per movie).
        users: optional, indexed by nothing, with a ``user_id`` column and any attributes.
        source: the ratings file, named in error messages.
        line_offset: file line of ``ratings.iloc[0]`` (2 for a file with a header, 1 without).
    """
    ratings, n_dropped = _valid_ratings(ratings, items, scale, source, line_offset)
    ts = ratings["timestamp"].to_numpy(dtype=np.int64)
    # Index users and items first (a hash factorize, then a sort of the uniques only); dropping duplicate
    # pairs below never removes a user or an item, so the indices stay dense.
    user_ids, users_idx = _dense_index(ratings["user_id"].to_numpy(dtype=np.int64))
    item_ids, items_idx = _dense_index(ratings["movie_id"].to_numpy(dtype=np.int64))
    rows = _latest_of_pairs(users_idx, items_idx, len(item_ids), ts)
    n_duplicates = len(ratings) - len(rows)
    if n_duplicates:
        log.warning("%s: %d duplicate (user, movie) ratings; kept the latest of each", source, n_duplicates)
    item_table = _item_table(items, item_ids)
    genre_names, genres = _genre_matrix(item_table["genres"])
    user_table = None
    if users is not None:
        user_table = users.drop_duplicates("user_id").set_index("user_id").reindex(user_ids).reset_index()
    return Corpus(
        name=name,
        users=users_idx[rows].astype(np.int32),
        items=items_idx[rows].astype(np.int32),
        ratings=ratings["rating"].to_numpy(dtype=np.float32)[rows],
        timestamps=ts[rows],
        user_ids=user_ids,
        item_table=item_table,
        genre_names=genre_names,
        genres=genres,
        scale=scale,
        tags=_index_items(tags, item_ids),
        genome=_index_items(genome, item_ids),
        user_table=user_table,
        n_dropped=n_dropped,
        n_duplicates=n_duplicates,
    )


def _valid_ratings(ratings: pd.DataFrame, items: pd.DataFrame, scale: RatingScale, source: str,
                   line_offset: int) -> tuple[pd.DataFrame, int]:  # fmt: skip
    """The rows with every field and a movie of the items file (the others dropped, counted and logged); a rating
    outside the scale is an error naming its file line."""
    n_raw = len(ratings)
    complete = ratings[["user_id", "movie_id", "rating", "timestamp"]].notna().all(axis=1).to_numpy()
    # Ratings of movies missing from the items file cannot be described or shown: dropped and counted too.
    known_item = ratings["movie_id"].isin(items["movie_id"]).to_numpy()
    keep = complete & known_item
    rating = ratings["rating"].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = keep & ((rating < scale.low) | (rating > scale.high))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}, line {first + line_offset}: rating {rating[first]:g} is outside the release's scale "
            f"[{scale.low:g}, {scale.high:g}] ({int(bad.sum())} such rows). Fix or remove those rows, or "
            f"set data.rating_scale for a custom dataset."
        )
    n_dropped = int((~keep).sum())
    if n_dropped:
        log.warning("%s: dropped %d of %d rating rows with missing fields or unknown movie ids", source, n_dropped, n_raw)
    return ratings[keep], n_dropped


def _item_table(items: pd.DataFrame, item_ids: np.ndarray) -> pd.DataFrame:
    """movie_id, title, year, genres of each indexed item, in index order (the last row of a repeated movie id)."""
    table = (
        items.drop_duplicates("movie_id", keep="last")
        .set_index("movie_id")
        .reindex(item_ids)
        .rename_axis("movie_id")
        .reset_index()
    )
    table["title"] = table["title"].fillna("").astype(str)
    table["year"] = pd.array(table["year"], dtype="Int64")
    table["genres"] = table["genres"].fillna("(no genres listed)").astype(str)
    return table[["movie_id", "title", "year", "genres"]]


def _genre_matrix(genres: pd.Series) -> tuple[list[str], np.ndarray]:
    """The genre names (sorted) and the (n_items, n_genres) uint8 multi-hot of ``|``-joined genre strings."""
    dummies = genres.str.get_dummies(sep="|")
    dummies = dummies.drop(columns=[c for c in dummies.columns if c in {"(no genres listed)", ""}])
    names = sorted(dummies.columns)
    return names, dummies[names].to_numpy(dtype=np.uint8)
