"""Item descriptors and (anchor, positive, negative) triplet mining for the Siamese family (as in a public
Siamese-network notebook on MovieLens genome tags).

Descriptors of an item: its genres, its release decade, the ``genome_k`` most relevant genome tags where the
release has a genome and the ``tags_k`` most applied user tags where it has tags, lower-cased so that a genre and
a tag with the same text are one descriptor. They form a binary multi-hot ``X`` (n_items x V, scipy CSR).

Triplets, for every anchor item (exact; the chunked, vectorised engine is :mod:`recarena.data.mining`):

- content positives (``content_per_anchor``): the items sharing the most descriptors with the anchor (>= 1), the
  notebook's rule, in decreasing order of overlap;
- ratings positives (``ratings_per_anchor``): the items co-liked most often (>= once) with the anchor, from
  ``C = B B^T`` with ``B`` the items x users matrix of *training* ratings >= the loss's ``positive_threshold``;
  each user counts with their ``user_cap`` latest likes only (the cost is the sum over users of their count
  squared, and a user who likes thousands of movies says little about any one pair);
- ``positives=both`` is the union of the two triplet sets;
- the negative of each positive (``negatives=``) is drawn among the items other than the anchor that overlap the
  anchor less than a content positive does; for a ratings positive, among the items other than the anchor and the
  positive that are co-liked with the anchor less often (drawn again while the draw is not; dropped after
  ``REDRAWS`` failures, i.e. when nearly every item at the chosen overlap is co-liked as often).
  ``easiest``: a uniformly random item among those sharing the fewest descriptors with the anchor. The notebook took
  one of the 3 first in catalogue order among them; with thousands of items sharing nothing, a uniform draw is the
  same rule without that order's bias.
  ``near_miss``: a uniformly random item among those sharing the most descriptors while still strictly fewer than
  the positive does; when there is none (a ratings positive sharing no descriptor), the easiest one. It is picked
  offline by descriptor overlap, not FaceNet's semi-hard negative (Schroff et al. 2015: farther from the anchor
  than the positive in the *current embedding*, within the margin), hence its name; ``semi_hard``, its former
  name, still works with a warning.

Ties (several items at the same overlap or co-like count) are broken uniformly at random from a generator seeded
with the run seed, so a run's triplets are reproducible. A seeded ``heldout_fraction`` of the anchor items is held
out for the triplet ROC-AUC: the triplets whose anchor and positive are both among them are the held-out ones,
and no training triplet holds any of them (:func:`split_by_items`).

Mining always works on the multi-hot overlaps: the triplets do not depend on ``model.encoding`` (the encoder's
input, multi-hot or the descriptors' text vectors of :mod:`recarena.data.text_encoding`).

Run: ``python train.py model=siamese`` (the ``loss=triplet`` view ``triplets``).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recarena.data.corpus import Corpus
from recarena.data.mining import CHUNK_CELLS, INF, Chunk, Groups, top_co_liked
from recarena.data.side_info import check_genome, visible_tags
from recarena.data.splits import Split
from recarena.data.text_encoding import require_text_extra
from recarena.errors import ConfigError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from recarena.data.datamodule import MovieLensDataModule

#: Draws of a ratings triplet's negative before the triplet is dropped (each redraw: it was the positive, or an
#: item co-liked with the anchor as often as the positive).
REDRAWS = 8
#: Chunks mined at once (each holds ~CHUNK_CELLS cells of lookups and products).
MINING_THREADS = 2


@dataclass(frozen=True)
class MiningOptions:
    """The ``model.*`` keys that shape descriptors and triplets (see ``conf/model/siamese.yaml``)."""

    positives: str = "both"
    negatives: str = "near_miss"
    content_per_anchor: int = 1
    ratings_per_anchor: int = 50
    heldout_fraction: float = 0.1
    genome_k: int = 5
    tags_k: int = 5
    user_cap: int = 300
    encoding: str = "multi_hot"
    allow_future_item_features: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> MiningOptions:
        """Known keys of ``cfg`` (other model keys are ignored), checked; raises :class:`ConfigError` (also for
        ``encoding=text`` without the text extra installed, before any mining)."""
        cfg = dict(cfg or {})
        if cfg.get("negatives") == "semi_hard":
            log.warning("model.negatives=semi_hard is now called near_miss (an offline near miss by descriptor "
                        "overlap, not FaceNet's semi-hard negative): use model.negatives=near_miss")  # fmt: skip
            cfg["negatives"] = "near_miss"
        opts = cls(**{f.name: type(f.default)(cfg[f.name]) for f in fields(cls) if cfg.get(f.name) is not None})
        choices = {
            "positives": ("content", "ratings", "both"),
            "negatives": ("easiest", "near_miss"),
            "encoding": ("multi_hot", "text"),
        }
        for key, allowed in choices.items():
            if getattr(opts, key) not in allowed:
                raise ConfigError(f"model.{key}={getattr(opts, key)!r} is unknown; use one of {', '.join(allowed)}.")
        if opts.encoding == "text":
            require_text_extra()
        if not 0.0 <= opts.heldout_fraction < 1.0:
            raise ConfigError(f"model.heldout_fraction must be in [0, 1), got {opts.heldout_fraction}.")
        if min(opts.genome_k, opts.tags_k, opts.content_per_anchor, opts.ratings_per_anchor) < 0 or opts.user_cap < 1:
            raise ConfigError(
                "model.genome_k, tags_k, content_per_anchor and ratings_per_anchor must be >= 0, model.user_cap >= 1."
            )
        return opts


# ------------------------------------------------------------------------------------------------ descriptors
def _top_per_item(frame: pd.DataFrame | None, score: str, k: int) -> pd.DataFrame:
    """The ``k`` rows of highest ``score`` per item (ties: alphabetical tag), as (item, text)."""
    if frame is None or not len(frame) or k == 0:
        return pd.DataFrame({"item": np.empty(0, np.int64), "text": np.empty(0, object)})
    ranked = frame.sort_values(["item", score, "tag"], ascending=[True, False, True], kind="stable")
    ranked = ranked[ranked.groupby("item").cumcount() < k]
    return pd.DataFrame({"item": ranked["item"].to_numpy(np.int64), "text": ranked["tag"].astype(str).to_numpy()})


def item_descriptors(corpus: Corpus, genome_k: int = 5, tags_k: int = 5,
                     split: Split | None = None) -> tuple[sp.csr_matrix, list[str]]:  # fmt: skip
    """Binary multi-hot ``X`` (n_items x V, float32 CSR) and its vocabulary (sorted, lower-case); the user tags are
    those ``split`` leaves before its held-out ratings (:func:`recarena.data.side_info.visible_tags`)."""
    names = np.array([g.lower() for g in corpus.genre_names], dtype=object)
    item_g, col_g = np.nonzero(corpus.genres)
    year = corpus.item_table["year"]
    has_year = year.notna().to_numpy()
    decade = (year[has_year].astype(np.int64) // 10 * 10).astype(str) + "s"
    parts = [
        pd.DataFrame({"item": item_g.astype(np.int64), "text": names[col_g]}),
        pd.DataFrame({"item": np.flatnonzero(has_year), "text": decade.to_numpy(dtype=object)}),
        _top_per_item(corpus.genome, "relevance", genome_k),
        _top_per_item(visible_tags(corpus, split), "count", tags_k),
    ]
    pairs = pd.concat(parts, ignore_index=True)
    pairs["text"] = pairs["text"].str.strip().str.lower()
    pairs = pairs[~pairs["text"].isin(["", "unknown", "(no genres listed)"])].drop_duplicates()
    vocabulary, cols = np.unique(pairs["text"].to_numpy(dtype=str), return_inverse=True)
    ones = np.ones(len(pairs), dtype=np.float32)
    x = sp.csr_matrix((ones, (pairs["item"].to_numpy(), cols)), shape=(corpus.n_items, len(vocabulary)))
    return x, [str(v) for v in vocabulary]


def liked_by(corpus: Corpus, rows: np.ndarray, threshold: float | None, user_cap: int) -> sp.csr_matrix:
    """``B`` (n_items x n_users, binary CSR): the rating rows >= ``threshold``, each user's ``user_cap`` latest."""
    if threshold is not None:
        rows = rows[corpus.ratings[rows] >= threshold]
    users, ts = corpus.users[rows], corpus.timestamps[rows]
    order = np.lexsort((-rows, -ts, users))  # per user, latest first (row order breaks timestamp ties)
    counts = np.bincount(users, minlength=corpus.n_users)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within user, in `order`
    kept = rows[order[rank < user_cap]]
    ones = np.ones(len(kept), dtype=np.float32)
    shape = (corpus.n_items, corpus.n_users)
    return sp.csr_matrix((ones, (corpus.items[kept], corpus.users[kept])), shape=shape)


# ---------------------------------------------------------------------------------------------------- mining
def mine_triplets(
    x: sp.csr_matrix, liked: sp.csr_matrix | None, content: int = 1, ratings: int = 50, negatives: str = "near_miss",
    seed: int = 0,
) -> np.ndarray:
    """Triplets ``(T, 3)`` int64 (anchor, positive, negative), sorted and unique; see the module docstring.

    Args:
        x: descriptors (n_items x V). liked: ``B`` of :func:`liked_by`, needed when ``ratings`` > 0.
        content, ratings: positives per anchor from shared descriptors and from co-likes (the most similar
            items, in order; 0 = none from that source), each with its own negative.
    """
    n = x.shape[0]
    content, ratings = min(content, n - 1), min(ratings, n - 1)
    if max(content, ratings) < 1:
        return np.empty((0, 3), np.int64)
    groups = Groups(x)
    liked_t = None if liked is None else liked.T.tocsr()
    step = int(np.clip(CHUNK_CELLS // max(n, 1), 1, max(n, 1)))  # a chunk's products hold <= CHUNK_CELLS cells

    def mine(index: int) -> np.ndarray:
        # Each chunk draws from its own generator, so the triplets do not depend on the order chunks finish in.
        start = index * step
        chunk = Chunk(groups, start, min(start + step, n), np.random.default_rng([seed, index]))
        return _mine_chunk(chunk, liked, liked_t, content, ratings, negatives == "near_miss")

    # Chunks are independent; numpy and scipy release the GIL in their loops, so two threads overlap (~1.3x).
    with ThreadPoolExecutor(max_workers=MINING_THREADS) as pool:
        found = list(pool.map(mine, range(-(-n // step))))
    return np.unique(np.concatenate([np.empty((0, 3), np.int64), *found]).astype(np.int64), axis=0)


def _mine_chunk(
    chunk: Chunk, liked: sp.csr_matrix | None, liked_t: sp.csr_matrix | None, content: int, ratings: int,
    near_miss: bool,
) -> np.ndarray:
    """The triplets of one chunk of anchors, (T, 3): ratings positives first, then content positives."""
    n, rng, out = chunk.g.n, chunk.rng, [np.empty((0, 3), np.int64)]
    rows, anchors, unbounded = chunk.rows, chunk.anchors, np.full(len(chunk.rows), INF)
    if ratings:  # first: the content positives below are excluded from later picks of their anchor
        start = int(anchors[0])
        likes = (liked[start : start + len(rows)] @ liked_t).tocsr()  # (c, n) co-like counts
        pos, count, keys, co_likes = top_co_liked(likes, anchors, ratings, rng)  # (c, ratings) each; lookup
        pair = np.repeat(rows, ratings)  # (m,) one per (anchor, positive)
        pos, count = pos.ravel(), count.ravel()
        largest = np.full(len(pair), near_miss)
        bound = np.where(largest, chunk.overlap(pair, pos), INF)
        neg, todo = np.full(len(pair), -1), np.arange(len(pair))
        for _ in range(REDRAWS):  # redraw the pairs that drew their positive or an item co-liked as often
            cand, _, found = chunk.pick(pair[todo], bound[todo], largest[todo])
            query = pair[todo] * n + cand
            at = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
            co = np.where(keys[at] == query, co_likes[at], 0) if len(keys) else np.zeros(len(todo))
            good = found & (cand != pos[todo]) & (co < count[todo])
            neg[todo[good]] = cand[good]
            lost = ~found & largest[todo]  # no near miss: the easiest negative instead
            largest[todo[lost]], bound[todo[lost]] = False, INF
            todo = todo[(found & ~good) | lost]
        ok = (neg >= 0) & (count >= 1)
        out.append(np.stack([anchors[pair[ok]], pos[ok], neg[ok]], axis=1))
    for _ in range(content):
        pos, top, ok = chunk.pick(rows, unbounded, largest=True)  # (c,) most shared descriptors
        ok &= top >= 1
        chunk.exclude(rows[ok], pos[ok])
        neg, _, found = chunk.pick(rows, top, largest=near_miss)  # below the positive's overlap: least or most
        ok &= found
        out.append(np.stack([anchors[ok], pos[ok], neg[ok]], axis=1))
    return np.concatenate(out)


def split_by_items(triplets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) triplets that share no anchor or positive item: a seeded ``fraction`` of the anchor items is
    held out; a held-out triplet has its anchor *and* its positive among them, and no training triplet holds any
    of them, in any role.

    Holding out anchors alone would not do: the positives are mostly co-liked items, so a held-out pair (a, p)
    often appears reversed, (p, a, .), in training, and the AUC would measure memorised pairs. Triplets that mix
    the two sets are used by neither side. The negative of a held-out triplet may be a training item: it is the
    item the model should rank below the positive, whether or not it saw it.
    """
    anchors = np.unique(triplets[:, 0])
    n_out = int(np.floor(fraction * len(anchors) + 0.5)) if len(anchors) > 1 else 0
    n_out = min(max(n_out, int(fraction > 0)), len(anchors) - 1)  # at least one held out, one kept
    held = np.zeros(int(triplets.max()) + 1 if len(triplets) else 0, dtype=bool)
    held[np.random.default_rng([seed, 1]).permutation(anchors)[:n_out]] = True
    if not len(triplets):
        return triplets, triplets
    touched = held[triplets].any(axis=1)  # any role
    out = held[triplets[:, 0]] & held[triplets[:, 1]]
    return triplets[~touched], triplets[out]


# ------------------------------------------------------------------------------------------------ the view
class TripletData:
    """The Siamese family's data (``Siamese.prepares``), prepared once per corpus and split and shared by the
    ``triplets`` view and ``Siamese.attach``: the descriptors at once (all that scoring needs), the training and
    held-out triplets on first use (mining takes ~40 s at 25M ratings: a loaded run that only scores never mines).
    Triplets read the training ratings only.

    Attributes: ``options`` (:class:`MiningOptions`), ``descriptors`` (n_items, V) binary CSR, ``vocabulary`` (V,
    descriptor texts), ``train`` (T, 3) and ``heldout`` (H, 3) int64 (anchor, positive, negative) triplets whose
    held-out anchors and positives appear nowhere in ``train``.
    """

    def __init__(self, dm: MovieLensDataModule) -> None:
        self.options = MiningOptions.from_config(dm.view_options)
        check_genome(dm.corpus, dm.split, self.options.genome_k, self.options.allow_future_item_features)
        self.corpus, self.split, self.seed = dm.corpus, dm.split, dm.seed
        self.positive_threshold = dm.positive_threshold
        self.descriptors, self.vocabulary = item_descriptors(dm.corpus, self.options.genome_k, self.options.tags_k,
                                                             dm.split)  # fmt: skip

    @property
    def train(self) -> np.ndarray:
        return self._triplets[0]

    @property
    def heldout(self) -> np.ndarray:
        return self._triplets[1]

    @cached_property
    def _triplets(self) -> tuple[np.ndarray, np.ndarray]:
        opts, corpus = self.options, self.corpus
        liked = None
        if opts.positives != "content":
            liked = liked_by(corpus, self.split.train, self.positive_threshold, opts.user_cap)
        content = opts.content_per_anchor if opts.positives != "ratings" else 0
        ratings = opts.ratings_per_anchor if opts.positives != "content" else 0
        triplets = mine_triplets(self.descriptors, liked, content, ratings, opts.negatives, self.seed)
        if not len(triplets):
            raise ConfigError(f"no triplet could be mined from {corpus.name} with model.positives={opts.positives}")
        train, heldout = split_by_items(triplets, opts.heldout_fraction, self.seed)
        if not len(train):
            raise ConfigError(f"model.heldout_fraction={opts.heldout_fraction} leaves no training triplet on "
                              f"{corpus.name}: lower it")  # fmt: skip
        return train, heldout


def triplets_view(dm: MovieLensDataModule) -> dict[str, torch.Tensor]:
    """Training triplets as columns for :class:`~recarena.data.views.ShuffledBatches` (``rows`` = arange)."""
    train = torch.from_numpy(dm.prepared.train)  # (T, 3): the datamodule's TripletData
    return {"anchors": train[:, 0], "positives": train[:, 1], "negatives": train[:, 2], "rows": torch.arange(len(train))}
