"""Dataset curation: the "dataset size" knobs of ``conf/data/curation/*.yaml``, applied before splitting.

The knobs run in ONE pass, in this fixed order, each on what the previous ones left:

1. ``min_item_ratings``: drop movies with fewer ratings;
2. ``min_item_mean``: drop movies whose mean rating is lower. The mean is taken over the earliest ``known_share``
   of the ratings by time (the training share of the split that follows: 1 - val_fraction - test_fraction), never
   over the ratings that will be held out, so the filter does not select movies on their test outcomes; a movie
   with no rating in that share has no known mean and is dropped (step 1 removes whole movies, so it does not
   change any remaining movie's mean);
3. ``min_user_ratings``: drop users with fewer ratings *counted after the item filters*;
4. ``max_users``: keep a uniform sample of that many users (without replacement);
5. ``fraction``: keep a uniform sample of that share of the remaining ratings.

The count filters (steps 1 and 3) are the usual k-core practice: they count ratings, not how good they are.

Why one pass and not a fixed point: the order is easy to state and reproduce, and iterating would keep
shrinking the data in ways no one chose. The price: after step 3 (and 4, 5) some movie may again have fewer
than ``min_item_ratings`` ratings, and after 5 a user fewer than ``min_user_ratings``. The split's
``min_user_ratings`` keeps such users out of evaluation.

Sampling is deterministic under the seed (``seed`` of the config, else the run seed); steps 4 and 5 draw from
separate streams of it, so changing one knob does not reshuffle the other's draw on the same rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from recarena.data.corpus import Corpus
from recarena.errors import DataError

#: Bump when the meaning of a knob changes, so curated caches keyed by :func:`curation_key` are rebuilt.
CURATION_VERSION = 2

_DEFAULTS: dict[str, Any] = {
    "min_item_ratings": 0,
    "min_user_ratings": 0,
    "min_item_mean": None,
    "max_users": None,
    "fraction": 1.0,
    "seed": None,
}


def _knobs(cfg: Mapping) -> dict[str, Any]:
    """The knobs with defaults filled in and checked, so an invalid value fails before any work."""
    k = {name: cfg.get(name, default) if cfg is not None else default for name, default in _DEFAULTS.items()}
    for name in ("min_item_ratings", "min_user_ratings"):
        k[name] = int(k[name] or 0)
        if k[name] < 0:
            raise ValueError(f"data.curation.{name} must be >= 0, got {k[name]}")
    if k["min_item_mean"] is not None:
        k["min_item_mean"] = float(k["min_item_mean"])
    if k["max_users"] is not None:
        k["max_users"] = int(k["max_users"])
        if k["max_users"] < 1:
            raise ValueError(f"data.curation.max_users must be >= 1 or null, got {k['max_users']}")
    k["fraction"] = float(1.0 if k["fraction"] is None else k["fraction"])
    if not 0.0 < k["fraction"] <= 1.0:
        raise ValueError(f"data.curation.fraction must be in (0, 1], got {k['fraction']}")
    return k


#: The knobs in the order curation applies them (each reads what the previous ones left).
_ORDER = ("min_item_ratings", "min_item_mean", "min_user_ratings", "max_users", "fraction")


def _is_on(k: Mapping[str, Any], knob: str) -> bool:
    value = k[knob]
    if knob == "fraction":
        return value < 1.0
    if knob in ("min_item_ratings", "min_user_ratings"):
        return value > 0
    return value is not None


def _active(k: Mapping[str, Any]) -> bool:
    return any(_is_on(k, knob) for knob in _ORDER)


def _samples(k: Mapping[str, Any]) -> bool:
    """Whether any knob draws at random (only then does the seed matter)."""
    return k["max_users"] is not None or k["fraction"] < 1.0


def _seed(k: Mapping[str, Any], seed: int) -> int:
    return int(seed if k["seed"] is None else k["seed"])


def _rng(seed: int, stream: int) -> np.random.Generator:
    # SeedSequence needs non-negative entropy; the modulus keeps negative run seeds usable and distinct.
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, stream]))


def _early_item_means(corpus: Corpus, rows: np.ndarray, known_share: float) -> np.ndarray:
    """(n_items,) mean rating of each item over the earliest ``known_share`` of ``rows`` by (timestamp, row);
    NaN for an item without a rating there."""
    if not 0.0 < known_share <= 1.0:
        raise ValueError(f"the split's training share must be in (0, 1], got {known_share}")
    order = np.lexsort((rows, corpus.timestamps[rows]))
    early = rows[order[: int(round(known_share * len(rows)))]]
    items = corpus.items[early]
    sums = np.bincount(items, weights=corpus.ratings[early].astype(np.float64), minlength=corpus.n_items)
    counts = np.bincount(items, minlength=corpus.n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def curation_key(cfg: Mapping, seed: int, known_share: float = 1.0) -> str:
    """A short stable key of the curation's effect, for cache paths: ``"none"`` when no knob is active.

    The seed enters only when a knob samples, so filter-only curations share one cache across run seeds; the
    known share only when ``min_item_mean`` reads it.
    """
    k = _knobs(cfg)
    if not _active(k):
        return "none"
    payload = {name: k[name] for name in _DEFAULTS if name != "seed"}
    payload["seed"] = _seed(k, seed) if _samples(k) else None
    payload["known_share"] = round(float(known_share), 9) if k["min_item_mean"] is not None else None
    payload["version"] = CURATION_VERSION
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def curate(corpus: Corpus, cfg: Mapping, seed: int, known_share: float = 1.0) -> Corpus:
    """Apply the curation knobs in the documented order; the corpus itself when none is active. ``known_share``:
    the earliest share of the ratings by time that ``min_item_mean`` may read (the split's training share).

    Raises:
        DataError: when a knob leaves no rating, naming that knob.
    """
    k = _knobs(cfg)
    if not _active(k):
        return corpus
    step = _Step(corpus, k, _seed(k, seed), known_share)
    rows = np.arange(corpus.n_ratings, dtype=np.int64)
    for knob in _ORDER:
        if _is_on(k, knob):
            rows = step.keep(rows, getattr(step, knob)(rows), knob)
    return corpus.subset(rows)


class _Step:
    """One curation knob at a time: each method takes the rows still kept and returns which of them stay."""

    def __init__(self, corpus: Corpus, knobs: Mapping[str, Any], seed: int, known_share: float) -> None:
        self.corpus, self.k, self.seed, self.known_share = corpus, knobs, seed, known_share

    def keep(self, rows: np.ndarray, mask: np.ndarray, knob: str) -> np.ndarray:
        kept = rows[mask]
        if not len(kept):
            raise DataError(
                f"data.curation.{knob}={self.k[knob]} removed every remaining rating of {self.corpus.name} "
                f"({len(rows)} before it): relax that option (curation order: {', '.join(_ORDER)})."
            )
        return kept

    def min_item_ratings(self, rows: np.ndarray) -> np.ndarray:
        counts = np.bincount(self.corpus.items[rows], minlength=self.corpus.n_items)
        return counts[self.corpus.items[rows]] >= self.k["min_item_ratings"]

    def min_item_mean(self, rows: np.ndarray) -> np.ndarray:
        means = _early_item_means(self.corpus, rows, self.known_share)
        return means[self.corpus.items[rows]] >= self.k["min_item_mean"]  # NaN (no early rating): out

    def min_user_ratings(self, rows: np.ndarray) -> np.ndarray:
        counts = np.bincount(self.corpus.users[rows], minlength=self.corpus.n_users)
        return counts[self.corpus.users[rows]] >= self.k["min_user_ratings"]

    def max_users(self, rows: np.ndarray) -> np.ndarray:
        present = np.unique(self.corpus.users[rows])
        if len(present) <= self.k["max_users"]:
            return np.ones(len(rows), dtype=bool)
        chosen = np.zeros(self.corpus.n_users, dtype=bool)
        chosen[_rng(self.seed, 1).choice(present, size=self.k["max_users"], replace=False)] = True
        return chosen[self.corpus.users[rows]]

    def fraction(self, rows: np.ndarray) -> np.ndarray:
        # Round half up; the sample is sorted back to file order, which breaks timestamp ties in the splits.
        n = int(np.floor(self.k["fraction"] * len(rows) + 0.5))
        picked = np.zeros(len(rows), dtype=bool)
        picked[_rng(self.seed, 2).choice(len(rows), size=n, replace=False)] = True
        return picked
