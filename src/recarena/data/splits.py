"""Train / validation / test splits of a (curated) :class:`Corpus`, as sorted int64 row indices.

Strategies (``conf/split/*.yaml``), registered in :data:`SPLITTERS`, all vectorised (one stable sort, then
per-user ranks from ``np.bincount`` + ``cumsum``; no Python loop over users):

- ``temporal`` (default): per user, ratings ordered by (timestamp, row); the last ones are test, those before
  them validation. Per-user counts are ``floor(f * n + 0.5)`` (round half up), at least 1 when ``f > 0``,
  and capped so at least one rating stays in train. Users with fewer than ``min_user_ratings`` stay in train.
- ``time_cutoff``: one global pair of cutoff times at the quantiles; ties at a cutoff go to the later part.
- ``random``: global ratios on a seeded permutation; ``per_user`` applies the temporal counts to a seeded
  random order within each user (RecBole's protocol).
- ``leave_one_out``: per user the last rating is test, the one before it validation.
- ``users``: held-out users (of those with ``min_user_ratings``); the earlier ``known_fraction`` of each one's
  time-ordered ratings is model input (``known``), the rest to predict; they have no train rows.

Timestamp ties are broken by row (file) order everywhere, so the same corpus always gives the same split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recarena.atomic import atomic_file
from recarena.data.corpus import Corpus
from recarena.errors import DataError

log = logging.getLogger(__name__)

#: Bump when a strategy's output for the same inputs changes, so cached splits are rebuilt.
SPLIT_FORMAT_VERSION = 1
PARTS = ("train", "val", "test", "known")
Parts = dict[str, np.ndarray]


@dataclass(frozen=True)
class Split:
    """Row indices into the corpus rating arrays, each sorted; together they cover every row once."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    known: np.ndarray  # held-out users' input ratings (split=users only; else empty)
    fingerprint: str  # of the content: equal splits have equal fingerprints on any machine
    val_users_cold: bool  # split=users: val/test users have no train rows


def fingerprint(name: str, parts: Mapping[str, np.ndarray]) -> str:
    """sha256 (16 hex chars) of the name and the index arrays as little-endian int64: a pure function of content."""
    h = hashlib.sha256(name.encode())
    for part in PARTS:
        arr = np.ascontiguousarray(parts[part], dtype="<i8")
        h.update(f"|{part}:{len(arr)}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- helpers
def _round(x: np.ndarray) -> np.ndarray:
    """Round half up (np.round rounds half to even, which would make 0.5-cases depend on parity)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def _ranks(users: np.ndarray, n_users: int, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's rank within its user by (key, row) -- row order breaks ties -- and each user's count."""
    rows = np.arange(len(users))
    order = np.lexsort((rows, key, users))  # last key is the primary one
    counts = np.bincount(users, minlength=n_users)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = rows - np.repeat(starts, counts)
    return rank, counts


def _tail(
    corpus: Corpus, rank: np.ndarray, counts: np.ndarray, n_test: np.ndarray, n_val: np.ndarray
) -> Parts:
    """Per user: the last ``n_test`` rows by rank are test, the ``n_val`` before them val, the rest train."""
    from_end = counts[corpus.users] - 1 - rank
    test = from_end < n_test[corpus.users]
    val = ~test & (from_end < (n_test + n_val)[corpus.users])
    return {"train": np.flatnonzero(~(test | val)), "val": np.flatnonzero(val), "test": np.flatnonzero(test)}


def _user_counts(counts: np.ndarray, p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user test/val counts: rounded shares, >= 1 when the share is > 0, leaving >= 1 rating to train."""
    eligible = counts >= p["min_user_ratings"]
    n_test = np.where(p["test_fraction"] > 0, np.maximum(_round(p["test_fraction"] * counts), 1), 0)
    n_val = np.where(p["val_fraction"] > 0, np.maximum(_round(p["val_fraction"] * counts), 1), 0)
    n_test = np.where(eligible, np.minimum(n_test, counts - 1), 0)
    n_val = np.where(eligible, np.clip(n_val, 0, counts - 1 - n_test), 0)
    return n_test, n_val


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, SPLIT_FORMAT_VERSION]))


# ---------------------------------------------------------------------------------------------- strategies
def _temporal(corpus: Corpus, p: Mapping[str, Any], seed: int) -> Parts:
    rank, counts = _ranks(corpus.users, corpus.n_users, corpus.timestamps)
    return _tail(corpus, rank, counts, *_user_counts(counts, p))


def _leave_one_out(corpus: Corpus, p: Mapping[str, Any], seed: int) -> Parts:
    rank, counts = _ranks(corpus.users, corpus.n_users, corpus.timestamps)
    n_test = np.where(counts >= p["min_user_ratings"], np.minimum(counts - 1, 1), 0)
    return _tail(corpus, rank, counts, n_test, np.where(n_test > 0, np.minimum(counts - 2, 1), 0))


def _time_cutoff(corpus: Corpus, p: Mapping[str, Any], seed: int) -> Parts:
    ts = corpus.timestamps
    n = len(ts)
    sorted_ts = np.sort(ts, kind="stable")
    n_test, n_val = int(_round(p["test_fraction"] * n)), int(_round(p["val_fraction"] * n))
    # Cutoff = timestamp of the first rating of the later part; ">=" sends its ties to the later part.
    t_test = sorted_ts[n - n_test] if n_test else np.iinfo(np.int64).max
    t_val = sorted_ts[max(n - n_test - n_val, 0)] if n_val else t_test
    test, val = ts >= t_test, (ts >= t_val) & (ts < t_test)
    return {"train": np.flatnonzero(ts < t_val), "val": np.flatnonzero(val), "test": np.flatnonzero(test)}


def _random(corpus: Corpus, p: Mapping[str, Any], seed: int) -> Parts:
    rng = _rng(seed)
    if p["per_user"]:
        rank, counts = _ranks(corpus.users, corpus.n_users, rng.random(corpus.n_ratings))
        return _tail(corpus, rank, counts, *_user_counts(counts, p))
    n = corpus.n_ratings
    perm = rng.permutation(n)
    n_test, n_val = int(_round(p["test_fraction"] * n)), int(_round(p["val_fraction"] * n))
    return {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}


def _users(corpus: Corpus, p: Mapping[str, Any], seed: int) -> Parts:
    rank, counts = _ranks(corpus.users, corpus.n_users, corpus.timestamps)
    eligible = np.flatnonzero(counts >= max(p["min_user_ratings"], 2))  # >= 1 known and >= 1 to predict
    shuffled = _rng(seed).permutation(eligible)
    n_test, n_val = (int(_round(p[f] * len(eligible))) for f in ("test_fraction", "val_fraction"))
    n_test, n_val = max(n_test, int(p["test_fraction"] > 0)), max(n_val, int(p["val_fraction"] > 0))
    group = np.zeros(corpus.n_users, dtype=np.int8)  # 0 train, 1 val, 2 test
    group[shuffled[:n_test]] = 2
    group[shuffled[n_test : n_test + n_val]] = 1
    # At least one known rating (unless known_fraction=0: pure cold start) and at least one to predict.
    n_known = np.clip(_round(p["known_fraction"] * counts), int(p["known_fraction"] > 0), counts - 1)
    g = group[corpus.users]
    known = (g > 0) & (rank < n_known[corpus.users])
    val, test = np.flatnonzero((g == 1) & ~known), np.flatnonzero((g == 2) & ~known)
    return {"train": np.flatnonzero(g == 0), "known": np.flatnonzero(known), "val": val, "test": test}


Splitter = Callable[[Corpus, Mapping[str, Any], int], Parts]
_F = {"val_fraction": 0.1, "test_fraction": 0.1}
#: name -> (splitter, parameters with defaults, whether the seed changes the output)
SPLITTERS: dict[str, tuple[Splitter, dict[str, Any], bool]] = {
    "temporal": (_temporal, {**_F, "min_user_ratings": 3}, False),
    "time_cutoff": (_time_cutoff, dict(_F), False),
    "random": (_random, {**_F, "per_user": False, "min_user_ratings": 3}, True),
    "leave_one_out": (_leave_one_out, {"min_user_ratings": 3}, False),
    "users": (_users, {**_F, "known_fraction": 0.5, "min_user_ratings": 4}, True),
}


def split_parameters(cfg: Mapping) -> tuple[str, dict[str, Any]]:
    """The strategy name and its effective parameters (defaults filled in, checked)."""
    name = str(cfg.get("name", "temporal"))
    if name not in SPLITTERS:
        raise ValueError(f"split.name={name!r} is unknown; known splits: {', '.join(sorted(SPLITTERS))}")
    # Cast to the defaults' types, so 3 and 3.0 (or 0.1 from YAML and from Python) hash alike.
    p = {key: type(default)(cfg.get(key, default)) for key, default in SPLITTERS[name][1].items()}
    for key in ("val_fraction", "test_fraction", "known_fraction"):
        if key in p and not 0.0 <= float(p[key]) < 1.0:
            raise ValueError(f"split.{key} must be in [0, 1), got {p[key]}")
    if p.get("val_fraction", 0) + p.get("test_fraction", 0) >= 1.0:
        raise ValueError(
            "split.val_fraction + split.test_fraction must be < 1 (something must be left to train)"
        )
    return name, p


def _seed(cfg: Mapping, seed: int) -> int:
    return int(seed if cfg.get("seed") is None else cfg.get("seed"))


def make_split(corpus: Corpus, cfg: Mapping, seed: int) -> Split:
    """Split ``corpus`` as ``cfg`` says (seed: ``cfg.seed``, else the run seed).

    Raises:
        DataError: when train or test comes out empty (too few ratings or users for the chosen split).
    """
    name, p = split_parameters(cfg)
    if not corpus.n_ratings:
        raise DataError(f"cannot split {corpus.name}: it has no ratings (check the curation options)")
    parts: Parts = {"known": np.empty(0, dtype=np.int64)}
    parts.update(SPLITTERS[name][0](corpus, p, _seed(cfg, seed)))
    parts = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}
    for part in ("train", "test"):
        if not len(parts[part]):
            raise DataError(
                f"split={name} left {part} empty on {corpus.name} ({corpus.n_ratings} ratings, {corpus.n_users} "
                f"users): lower split.min_user_ratings, change the fractions or curate less."
            )
    fp = fingerprint(name, parts)
    return Split(name=name, **{k: parts[k] for k in PARTS}, fingerprint=fp, val_users_cold=name == "users")


def split_cache_path(cache_dir: Path, corpus_key: str, cfg: Mapping, seed: int) -> Path:
    """``cache_dir/splits/<key>.npz``; the seed enters the key only for strategies it changes."""
    name, p = split_parameters(cfg)
    seeded = _seed(cfg, seed) if SPLITTERS[name][2] else None
    payload = {"v": SPLIT_FORMAT_VERSION, "corpus": corpus_key, "name": name, "params": p, "seed": seeded}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(cache_dir) / "splits" / f"{key}.npz"


def read_split(path: Path, corpus: Corpus) -> Split | None:
    """The split saved at ``path`` (a cache entry, or a run dir's ``data/split.npz``), or None when missing,
    unreadable or inconsistent with ``corpus`` (the cache then rebuilds it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            parts = {k: z[k].astype(np.int64) for k in PARTS}
            name, fp, cold = str(z["name"]), str(z["fingerprint"]), bool(z["val_users_cold"])
    except FileNotFoundError:
        return None
    except Exception as err:  # truncated zip, missing member, bad header: all mean "rebuild"
        log.warning("ignoring unreadable split file %s (%s)", path, err)
        return None
    allrows = np.concatenate([parts[k] for k in PARTS])
    if (
        fp != fingerprint(name, parts)
        or len(allrows) != corpus.n_ratings
        or (len(allrows) and (allrows.min() < 0 or allrows.max() >= corpus.n_ratings))
    ):
        log.warning("ignoring split file %s: it does not match the corpus", path)
        return None
    return Split(name=name, **parts, fingerprint=fp, val_users_cold=cold)


def write_split(path: Path, split: Split) -> None:
    """Save ``split`` as npz (temp file + ``os.replace``: a reader never sees half a file); :func:`read_split`
    reads it back. Row indices are stored as int32 when they fit (half the size; read back as int64)."""
    n_rows = sum(len(getattr(split, k)) for k in PARTS)
    compact = np.int32 if n_rows < 2**31 else np.int64
    with atomic_file(path, "wb") as f:
        meta = {"name": np.str_(split.name), "fingerprint": np.str_(split.fingerprint)}
        parts = {k: getattr(split, k).astype(compact) for k in PARTS}
        np.savez(f, **parts, **meta, val_users_cold=split.val_users_cold)


def load_or_make_split(
    corpus: Corpus, cfg: Mapping, seed: int, cache_dir: Path | None, corpus_key: str
) -> Split:
    """:func:`make_split`, cached as npz (temp file + ``os.replace``, so a reader never sees half a file)."""
    if cache_dir is None:
        return make_split(corpus, cfg, seed)
    path = split_cache_path(cache_dir, corpus_key, cfg, seed)
    split = read_split(path, corpus)
    if split is not None:
        return split
    if path.exists():
        log.warning("rebuilding the split cache %s", path)
    split = make_split(corpus, cfg, seed)
    write_split(path, split)
    return split


# ------------------------------------------------------------------------------------------------- stats
def split_stats(corpus: Corpus, split: Split) -> dict[str, Any]:
    """Sizes of the corpus and of each part, with cold users / items (none of their ratings in train)."""
    in_train_u = np.zeros(corpus.n_users, dtype=bool)
    in_train_i = np.zeros(corpus.n_items, dtype=bool)
    in_train_u[corpus.users[split.train]] = True
    in_train_i[corpus.items[split.train]] = True
    n_u, n_i, n_r = corpus.n_users, corpus.n_items, corpus.n_ratings
    stats: dict[str, Any] = {"split": split.name, "fingerprint": split.fingerprint}
    stats |= {"users": n_u, "items": n_i, "ratings": n_r, "density": float(n_r / max(n_u * n_i, 1))}
    for part in PARTS:
        rows = getattr(split, part)
        if part == "known" and not len(rows):
            continue
        users, items = np.unique(corpus.users[rows]), np.unique(corpus.items[rows])
        cold_u, cold_i = int((~in_train_u[users]).sum()), int((~in_train_i[items]).sum())
        stats[part] = {"ratings": len(rows), "users": len(users), "items": len(items)}
        stats[part] |= {"cold_users": cold_u, "cold_items": cold_i}
    return stats
