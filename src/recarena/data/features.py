"""Time-respecting user contexts and item side features for feature-based families (``model=twotower``).

A feature-based user is a function of the ratings the model may see: the *input rows* (the training part of the
split, plus the ``known`` rows of held-out users under ``split=users``), never validation or test ratings. The
context of a training label must moreover use only that user's input ratings strictly before it, in
(timestamp, row) order: the blog post "Building a Two-Tower Deep Learning Movie Recommender System in PyTorch" drew its
history/label split at random and the "Learning RecSys through Papers Vol II" write-up never checked the order, so both
let a label see its own future.

Everything is built once, vectorised, from one sort of the input rows by (user, timestamp, row) into a flat
per-user CSR layout (``ptr``). A *query* is a pair (user u, end e): "u's input ratings at flat positions
``ptr[u] .. e-1``". A training row's end is its own flat position (strictly before it); at evaluation the end is
``ptr[u+1]`` (all of u's input ratings). No per-example vector is ever stored:

* Sums (rating sum, per-genre rating sums and counts) use *block prefix sums*: per user, snapshots of the
  running sums every ``BLOCK`` ratings (``snap``, (S, 1 + 2G)); a query reads the snapshot at or before its
  position and adds the < ``BLOCK`` ratings after it with one padded (B, BLOCK-1) gather. Exact, with memory
  ``n_input / BLOCK`` rows and float32 sums that stay exact (half-star sums of one user).
* The ratings of the N context items (the PyTorch blog post's N most-rated training movies) are kept as a sorted list of
  their flat positions (``ctx_flat``); the ones before a query are ``ctx_ptr[u] .. searchsorted(ctx_flat, e)``,
  a ragged slice scattered into a (B, N) block per batch (no per-example vector is stored).
* The last L positively rated items before a query: the same with the positives' flat positions (``pos_flat``).

The torch side of the lookups is :class:`recarena.models.towers.ContextLookup`; the family that uses them is
``python train.py model=twotower``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recarena.data.corpus import Corpus
from recarena.data.side_info import visible_tags
from recarena.data.splits import Split

#: Ratings between two stored snapshots of a user's running sums (memory n_input/BLOCK rows; gather BLOCK-1).
BLOCK = 32
#: Item side inputs beyond the id embedding, in the column order of :func:`item_features`.
ITEM_SIDE_INPUTS = ("genres", "year", "tags")
#: Release years in 5-year buckets from 1920 (earlier ones join the first) to 2020+, plus one for "unknown".
YEAR_FIRST, YEAR_STEP, YEAR_BUCKETS = 1920, 5, 22


@dataclass
class ContextArrays:
    """The numpy tables of :class:`recarena.models.towers.ContextLookup` (see the module docstring).

    Shapes: E input ratings, S snapshots, C ratings of context items, P positive ratings, G genres, N context items.
    """

    ptr: np.ndarray  # (n_users + 1,) int64: user u's input ratings are flat positions ptr[u] .. ptr[u+1]-1
    items: np.ndarray  # (E,) int64 item of each flat position, time-ordered within a user
    ratings: np.ndarray  # (E,) float32
    flat_of_row: np.ndarray  # (n_ratings,) int64 flat position of each corpus row; -1 for non-input rows
    snap_ptr: np.ndarray  # (n_users + 1,) int64: user u's snapshots are snap[snap_ptr[u] + k], k = position // BLOCK
    snap: np.ndarray  # (S, 1 + 2G) float32 running [rating sum, genre rating sums, genre counts] before k*BLOCK
    context_items: np.ndarray  # (N,) int64 the most-rated training items, most rated first
    ctx_flat: np.ndarray  # (C,) int64 sorted flat positions of ratings of context items
    ctx_ptr: np.ndarray  # (n_users + 1,) int64 first entry of ctx_flat at or after ptr[u]
    pos_flat: np.ndarray  # (P,) int64 sorted flat positions of ratings >= the history threshold
    pos_ptr: np.ndarray  # (n_users + 1,) int64
    genres: np.ndarray  # (n_items, G) float32 multi-hot
    global_mean: float  # mean training rating (the prior of an empty context)


def _ptr(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _block_snapshots(
    ptr: np.ndarray, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, genres: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user running sums of [r, r * genre, genre] before local positions 0, BLOCK, 2 BLOCK, ... (exact)."""
    counts = np.diff(ptr)
    snap_ptr = _ptr(counts // BLOCK + 1)  # positions 0..n_u map to snapshots 0..n_u // BLOCK
    local = np.arange(len(items)) - ptr[users]
    block = snap_ptr[users] + local // BLOCK  # (E,) the snapshot after which each rating falls
    n_snap = int(snap_ptr[-1])
    # Block totals: a sparse (snapshots x items) matrix of ratings (or ones) times the genre matrix.
    by_rating = sp.csr_matrix((ratings.astype(np.float64), (block, items)), shape=(n_snap, len(genres)))
    by_count = sp.csr_matrix((np.ones(len(items)), (block, items)), shape=(n_snap, len(genres)))
    totals = np.hstack(
        [np.asarray(by_rating.sum(axis=1)), np.asarray(by_rating @ genres), np.asarray(by_count @ genres)]
    )  # (S, 1 + 2G) float64
    # Exclusive running sum within each user: global cumsum minus the block itself minus the user's start.
    running = np.cumsum(totals, axis=0) - totals
    first = np.repeat(snap_ptr[:-1], counts // BLOCK + 1)
    return snap_ptr, (running - running[first]).astype(np.float32)


def build_context_arrays(
    corpus: Corpus, train: np.ndarray, known: np.ndarray, context_items: int, history_threshold: float
) -> ContextArrays:
    """Time-ordered contexts over the input rows ``train`` and ``known`` (validation and test are never read).

    Args:
        train, known: corpus row indices of the split's training part and held-out users' known ratings.
        context_items: N, how many of the most-rated training items form the ratings context.
        history_threshold: ratings >= this are the positives of the recent-items history.
    """
    rows = np.concatenate([train, known]).astype(np.int64)
    users = corpus.users[rows].astype(np.int64)
    order = np.lexsort((rows, corpus.timestamps[rows], users))  # by user, then time, then file row
    rows, users = rows[order], users[order]
    flat_of_row = np.full(corpus.n_ratings, -1, dtype=np.int64)
    flat_of_row[rows] = np.arange(len(rows))
    popularity = np.bincount(corpus.items[train], minlength=corpus.n_items)
    top = np.argsort(-popularity, kind="stable")[: min(int(context_items), corpus.n_items)]
    return user_context_arrays(
        _ptr(np.bincount(users, minlength=corpus.n_users)), corpus.items[rows].astype(np.int64),
        corpus.ratings[rows].astype(np.float32), corpus.genres.astype(np.float32), top.astype(np.int64),
        history_threshold, float(corpus.ratings[train].mean()) if len(train) else 0.0, flat_of_row,
    )  # fmt: skip


def user_context_arrays(
    ptr: np.ndarray, items: np.ndarray, ratings: np.ndarray, genres: np.ndarray, context_items: np.ndarray,
    history_threshold: float, global_mean: float, flat_of_row: np.ndarray | None = None,
) -> ContextArrays:
    """The tables of users given directly as time-ordered ratings: user u's are ``items[ptr[u]:ptr[u+1]]`` (and
    ``ratings``), oldest first. Training builds them from the split (:func:`build_context_arrays`); a made-up
    user (``run.recommend(liked=...)``) from a list of (movie, rating), with the training run's context items
    and global mean, so both go through the same lookups and tower.
    """
    ptr, items = np.asarray(ptr, dtype=np.int64), np.asarray(items, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float32)
    users = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    snap_ptr, snap = _block_snapshots(ptr, users, items, ratings, genres)
    is_context = np.zeros(len(genres), dtype=bool)
    is_context[context_items] = True
    ctx_flat = np.flatnonzero(is_context[items])
    pos_flat = np.flatnonzero(ratings >= history_threshold)
    return ContextArrays(
        ptr=ptr, items=items, ratings=ratings, snap_ptr=snap_ptr, snap=snap,
        flat_of_row=np.full(0, -1, dtype=np.int64) if flat_of_row is None else flat_of_row,
        context_items=np.asarray(context_items, dtype=np.int64), ctx_flat=ctx_flat,
        ctx_ptr=np.searchsorted(ctx_flat, ptr), pos_flat=pos_flat, pos_ptr=np.searchsorted(pos_flat, ptr),
        genres=genres, global_mean=float(global_mean),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- item features
def item_feature_width(inputs: list[str], n_genres: int, n_tags: int) -> int:
    """Columns of :func:`item_features` for the chosen side inputs (known before any data is read)."""
    widths = {"genres": n_genres, "year": YEAR_BUCKETS, "tags": n_tags}
    return sum(widths[name] for name in ITEM_SIDE_INPUTS if name in inputs)


def item_features(corpus: Corpus, inputs: list[str], n_tags: int, split: Split | None = None) -> np.ndarray:
    """(n_items, F) float32: genre multi-hot, one-hot 5-year release bucket, multi-hot of the top tags.

    Tags: the ``n_tags`` tags applied most often among the applications ``split`` leaves before its held-out
    ratings (:func:`recarena.data.side_info.visible_tags`); an item has a tag's column set when any user applied
    it then. A release without tags gets zero columns of the same width, so the network's shape depends on the
    config only.
    """
    blocks = []
    if "genres" in inputs:
        blocks.append(corpus.genres.astype(np.float32))
    if "year" in inputs:
        year = corpus.item_table["year"].to_numpy(dtype=np.float64, na_value=np.nan)
        bucket = np.clip((year - YEAR_FIRST) // YEAR_STEP, 0, YEAR_BUCKETS - 2) + 1
        bucket = np.where(np.isnan(year), 0, bucket).astype(np.int64)  # 0 = unknown year
        blocks.append(np.eye(YEAR_BUCKETS, dtype=np.float32)[bucket])
    if "tags" in inputs:
        tags = np.zeros((corpus.n_items, n_tags), dtype=np.float32)
        counts = visible_tags(corpus, split)
        if counts is not None and len(counts) and n_tags:
            totals = counts.groupby("tag")["count"].sum().sort_values(ascending=False, kind="stable")
            column = pd.Series(np.arange(min(n_tags, len(totals))), index=totals.index[:n_tags])
            kept = counts[counts["tag"].isin(column.index)]
            tags[kept["item"].to_numpy(), column.reindex(kept["tag"]).to_numpy()] = 1.0
        blocks.append(tags)
    if not blocks:
        return np.zeros((corpus.n_items, 0), dtype=np.float32)
    return np.hstack(blocks)


class FeatureData:
    """The two-tower family's data (``TwoTower.prepares``), prepared once per corpus and split: the users' contexts
    over the input rows (training, plus the known rows of held-out users; :func:`build_context_arrays`) and the
    items' side features (:func:`item_features`). ``attach`` loads them into the model's lookups."""

    def __init__(self, corpus: Corpus, split: Split, item_inputs: list[str], context_items: int,
                 history_threshold: float, n_tags: int) -> None:  # fmt: skip
        self.contexts = build_context_arrays(corpus, split.train, split.known, context_items, history_threshold)
        self.item_features = item_features(corpus, item_inputs, n_tags, split)

    @classmethod
    def from_datamodule(cls, dm: Any) -> FeatureData:
        """From the datamodule's corpus and split, with the options of its ``model=`` config (``view_options``)."""
        o = dm.view_options
        return cls(dm.corpus, dm.split, list(o["item_inputs"]), int(o["context_items"]),
                   float(o["history_threshold"]), int(o["n_tags"]))  # fmt: skip


# ------------------------------------------------------------------------------------------------ hashing
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), 0x9E3779B97F4A7C15


def _splitmix64(keys: np.ndarray, salt: int) -> np.ndarray:
    """A well-mixed 64-bit hash of ``keys`` (uint64) for one salt, vectorised (no per-item Python)."""
    z = keys.astype(np.uint64) + np.uint64((salt * _GOLDEN) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hashed_rows(keys: np.ndarray, n_tables: int, size: int) -> np.ndarray:
    """(n, T) rows of a stacked (T * size)-row table: table t holds hash_t(key) mod size at offset t * size."""
    cols = [(_splitmix64(keys, salt=t + 1) % np.uint64(size)).astype(np.int64) + t * size for t in range(n_tables)]
    return np.stack(cols, axis=1) if cols else np.zeros((len(keys), 0), dtype=np.int64)


def collision_rates(rows: np.ndarray) -> tuple[float, float]:
    """(share of items sharing a row with another item in a table, averaged over tables; share of items whose
    whole tuple of rows equals another item's, i.e. that the model cannot tell apart at all)."""
    if rows.size == 0:
        return 0.0, 0.0
    per_table = []
    for t in range(rows.shape[1]):
        _, inverse, counts = np.unique(rows[:, t], return_inverse=True, return_counts=True)
        per_table.append(float((counts[inverse] > 1).mean()))
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return float(np.mean(per_table)), float((counts[inverse.ravel()] > 1).mean())
