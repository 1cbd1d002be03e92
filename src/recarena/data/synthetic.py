"""MovieLens-shaped synthetic data, written in the ml-latest CSV layout and read back by the real parser.

Generative story (all vectorised, ~25M ratings in seconds):

* user activity and item popularity follow Zipf-like power laws (random ranks, so ids carry no signal);
* each user draws popularity-weighted candidate items, then keeps the ones with the highest affinity
  ``p_u . q_i`` plus Gumbel noise: users rate what they like (ratings are missing not at random, as in
  MovieLens), so ranking models have a signal beyond popularity;
* rating = ``b_u + b_i + p_u . q_i + noise``, standardised to mean ~3.5 and std ~1, rounded to half stars;
* each user is active over a log-uniform span (an evening to years) inside 2015-2019.

Sampling without replacement uses one sort of packed int64 keys ``(user, score, item)``: the score is a pure
function of the pair (hash-seeded noise), so duplicate draws of a pair are identical keys and adjacent after
the sort, and each user's first ``d_u`` distinct keys are the best-scored candidates.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from recarena.atomic import staging_dir

#: Bump when the generator's output changes: it is part of the cache key of generated data.
SYNTHETIC_VERSION = 1
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_TAG_WORDS = (
    "atmospheric", "twist ending", "funny", "dark comedy", "visually appealing", "thought-provoking", "classic",
    "based on a book", "sci-fi", "dystopia", "romance", "quirky", "violence", "great soundtrack", "cult film",
    "predictable", "slow", "boring", "inspirational", "animation", "space", "time travel", "heist", "war",
    "psychological", "surreal", "satire", "family", "notable soundtrack", "feel-good",
)  # fmt: skip
_T0, _T1 = 1_420_070_400, 1_577_836_800  # 2015-01-01 .. 2020-01-01 UTC
_DIM = 8
_CHUNK = 1 << 22
#: Lower = users pick items closer to their taste (affinity std ~0.36 vs Gumbel's 1.28).
_SELECT_TEMPERATURE = 0.3
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash01(keys: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of ``keys + salt`` -> uniform (0, 1): a random number that is a pure function of the pair."""
    z = keys.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z ^= z >> np.uint64(31)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _zipf(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Power-law weights over randomly permuted ranks, normalised to sum 1."""
    w = (rng.permutation(n) + 10.0) ** -exponent
    return w / w.sum()


def _degrees(rng: np.random.Generator, weights: np.ndarray, n_items: int, n_ratings: int) -> np.ndarray:
    """Ratings per user: at least 1, proportional to ``weights``, at most ``cap`` (half the catalogue unless
    that cannot reach ``n_ratings``), summing exactly to ``n_ratings``."""
    n_users = len(weights)
    degree = np.zeros(n_users, dtype=np.int64)
    if n_ratings <= n_users:
        degree[rng.choice(n_users, n_ratings, replace=False)] = 1
        return degree
    cap = max(1, n_items // 2) if n_ratings <= n_users * max(1, n_items // 2) else n_items
    degree += 1
    left = n_ratings - n_users
    while left > 0:
        room = cap - degree
        w = np.where(room > 0, weights, 0.0)
        add = np.minimum(np.floor(left * w / w.sum()).astype(np.int64), room)
        if add.sum() == 0:  # the last few ratings: one more each for the heaviest users with room
            open_ = np.flatnonzero(room > 0)
            add[open_[np.argsort(-weights[open_], kind="stable")[:left]]] = 1
        degree += add
        left -= int(add.sum())
    return degree


def _pack(users: np.ndarray, low: np.ndarray, items: np.ndarray, low_bits: int, item_bits: int) -> np.ndarray:
    return (users.astype(np.int64) << (low_bits + item_bits)) | (low.astype(np.int64) << item_bits) | items


def _affinity(users: np.ndarray, items: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p_u . q_i`` for many pairs, in chunks so the gathered factors stay small."""
    out = np.empty(len(users), dtype=np.float32)
    for s in range(0, len(users), _CHUNK):
        out[s : s + _CHUNK] = np.einsum("nd,nd->n", p[users[s : s + _CHUNK]], q[items[s : s + _CHUNK]])
    return out


def _choice_keys(users, items, p, q, n_items, seed, score_bits, item_bits) -> np.ndarray:
    """Sort keys ``(user, descending score, item)``; score = affinity / temperature + Gumbel noise hashed
    from the pair (so a pair drawn twice gets the same key). Chunked: the float temporaries stay small."""
    keys = np.empty(len(users), dtype=np.int64)
    for s in range(0, len(users), _CHUNK):
        u, i = users[s : s + _CHUNK], items[s : s + _CHUNK]
        gumbel = -np.log(-np.log(_hash01(u * n_items + i, seed).astype(np.float32)))  # float32: 2x faster
        score = _affinity(u, i, p, q) / _SELECT_TEMPERATURE + gumbel
        level = (np.clip((score + 10.0) / 40.0, 0.0, 1.0 - 1e-6) * float(1 << score_bits)).astype(np.int64)
        keys[s : s + _CHUNK] = _pack(u, (1 << score_bits) - 1 - level, i, score_bits, item_bits)
    return keys


def _draw_popular(rng: np.random.Generator, item_of_rank: np.ndarray, size: int) -> np.ndarray:
    """Items drawn with Zipf-like popularity ~ 1 / (rank + 10), plus 3% uniform so every item can come up.

    Inverse-CDF of the continuous law (rank = 10 ((n + 10) / 10)^U - 10): O(1) per draw, where a
    ``searchsorted`` on the discrete CDF costs ~4 s per 36M draws.
    """
    n = len(item_of_rank)
    rank = (10.0 * np.exp(rng.random(size) * np.log1p(n / 10.0)) - 10.0).astype(np.int64)
    uniform = rng.random(size) < 0.03
    rank[uniform] = rng.integers(0, n, int(uniform.sum()))
    return item_of_rank[np.minimum(rank, n - 1)]


def _sample_pairs(rng, degree, item_of_rank, p, q, n_items, seed) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, ``degree[u]`` per user, preferring popular items the user likes.

    Each round draws ~1.4x the missing count per user, then one sort of packed keys drops repeated pairs and
    orders each user's candidates best first; the best ``degree[u]`` are kept. Users still short (heavy users
    whose draws keep hitting the same popular items) get further rounds of uniform draws.
    """
    n_users = len(degree)
    ib, ub = max(1, int(n_items - 1).bit_length()), max(1, int(n_users - 1).bit_length())
    sb = 63 - ib - ub
    if sb < 8:
        raise ValueError(f"n_users x n_items = {n_users} x {n_items} is too large for the generator.")
    kept_u, kept_i = np.empty(0, np.int64), np.empty(0, np.int64)
    have = np.zeros(n_users, dtype=np.int64)
    for round_ in range(200):
        active = np.flatnonzero(have < degree)
        if not len(active):
            break
        u = np.repeat(active, np.ceil((degree[active] - have[active]) * (1.4 + round_)).astype(np.int64) + 1)
        # Round 0 is popularity-weighted; later rounds (tail items for heavy users) uniform.
        i = _draw_popular(rng, item_of_rank, len(u)) if round_ == 0 else rng.integers(0, n_items, len(u))
        redo = np.zeros(n_users, dtype=bool)
        redo[active] = True
        old = redo[kept_u]
        keys = np.sort(_choice_keys(np.r_[kept_u[old], u], np.r_[kept_i[old], i], p, q, n_items, seed, sb, ib))
        del u, i
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
        ku, ki = keys >> (sb + ib), keys & ((1 << ib) - 1)
        del keys
        counts = np.bincount(ku, minlength=n_users)
        top = (np.arange(len(ku)) - (np.cumsum(counts) - counts)[ku]) < degree[ku]
        kept_u, kept_i = np.r_[kept_u[~old], ku[top]], np.r_[kept_i[~old], ki[top]]
        have = np.bincount(kept_u, minlength=n_users)
    return kept_u, kept_i


def _cover_items(rng, users, items, n_items) -> np.ndarray:
    """Give every unrated item one rating, taken from an item with several (its first rating stays)."""
    counts = np.bincount(items, minlength=n_items)
    unrated = np.flatnonzero(counts == 0)
    if not len(unrated):
        return items
    order = np.argsort(items, kind="stable")
    first = np.zeros(len(items), dtype=bool)
    first[order[np.r_[True, items[order][1:] != items[order][:-1]]]] = True
    donors = np.flatnonzero(~first)
    take = min(len(donors), len(unrated))
    items = items.copy()
    items[rng.choice(donors, take, replace=False)] = rng.permutation(unrated)[:take]
    return items  # an unrated item had no pair yet, so no duplicate (user, item) can appear


def generate_synthetic(
    out_dir: str | os.PathLike, n_users: int, n_items: int, n_ratings: int, with_tags: bool = True, seed: int = 0
) -> Path:
    """Write ``ratings.csv``, ``movies.csv`` (and ``tags.csv``) into ``out_dir``, atomically (temp dir + rename)."""
    if min(n_users, n_items, n_ratings) < 1 or n_ratings > n_users * n_items:
        raise ValueError(f"need 1 <= n_ratings <= n_users * n_items, got {n_ratings}, {n_users}, {n_items}")
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 0.6 / np.sqrt(np.sqrt(_DIM)), (n_users, _DIM)).astype(np.float32)
    q = rng.normal(0, 0.6 / np.sqrt(np.sqrt(_DIM)), (n_items, _DIM)).astype(np.float32)
    user_bias, item_bias = rng.normal(0, 0.35, n_users), rng.normal(0, 0.45, n_items)
    degree = _degrees(rng, _zipf(rng, n_users, 0.9), n_items, n_ratings)
    users, items = _sample_pairs(rng, degree, rng.permutation(n_items), p, q, n_items, seed)
    items = _cover_items(rng, users, items, n_items)

    # Time: each user active over a log-uniform span; sorting packed (user, time, item) orders rows by it.
    span = np.exp(rng.uniform(np.log(3600), np.log(_T1 - _T0), n_users))
    start = _T0 + rng.random(n_users) * (_T1 - _T0 - span)
    ib, ub = max(1, int(n_items - 1).bit_length()), max(1, int(n_users - 1).bit_length())
    tb = min(31, 63 - ib - ub)
    tq = (_hash01(users * n_items + items, seed + 1) * (1 << tb)).astype(np.int64)
    keys = np.sort(_pack(users, tq, items, tb, ib))
    del users, items, tq
    users, tq, items = keys >> (tb + ib), (keys >> ib) & ((1 << tb) - 1), keys & ((1 << ib) - 1)
    del keys
    timestamp = (start[users] + tq / float(1 << tb) * span[users]).astype(np.int64)
    raw = user_bias[users] + item_bias[items] + _affinity(users, items, p, q) + rng.normal(0, 0.5, len(users))
    stars = 3.55 + (raw - raw.mean()) / max(raw.std(), 1e-9)
    rating = np.clip(np.round(stars * 2) / 2, 0.5, 5.0).astype(np.float32)

    out_dir = Path(out_dir)
    with staging_dir(out_dir) as tmp:
        table = pa.table({"userId": (users + 1).astype(np.int32), "movieId": (items + 1).astype(np.int32),
                          "rating": rating, "timestamp": timestamp})  # fmt: skip
        pacsv.write_csv(table, tmp / "ratings.csv", pacsv.WriteOptions(batch_size=1 << 17))
        del table
        genre_idx = _write_movies(rng, q, tmp / "movies.csv")
        if with_tags:
            _write_tags(rng, users, items, timestamp, genre_idx, tmp / "tags.csv")
        settings = {"n_users": n_users, "n_items": n_items, "n_ratings": n_ratings, "with_tags": with_tags,
                    "seed": seed, "version": SYNTHETIC_VERSION}  # fmt: skip
        (tmp / "settings.json").write_text(json.dumps(settings))  # written last: marks a complete directory
        done = out_dir / "settings.json"
        if not (done.is_file() and done.read_text() == json.dumps(settings)):  # else a concurrent run made it
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(tmp, out_dir)
    return out_dir


def _write_movies(rng: np.random.Generator, q: np.ndarray, path: Path) -> np.ndarray:
    """Titles ``"Synthetic Movie 17 (1994)"``; 1-3 genres that follow the item factors. Returns main genres."""
    n = len(q)
    genre_axes = rng.normal(size=(len(GENRES), q.shape[1])).astype(np.float32)
    scores = q @ genre_axes.T - np.log(-np.log(rng.random((n, len(GENRES)))))
    ranked = np.argsort(-scores, axis=1)[:, :3]
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.4, 0.4, 0.2])
    names = np.array(GENRES, dtype=object)
    genres = names[ranked[:, 0]]
    for k in (1, 2):
        genres = genres + np.where(n_genres > k, "|" + names[ranked[:, k]].astype(str), "")
    year = np.clip(2019 - np.floor(rng.exponential(15, n)), 1920, 2019).astype(np.int64)
    ids = np.arange(1, n + 1)
    title = np.char.add(np.char.add(np.char.add("Synthetic Movie ", ids.astype(str)), " ("), year.astype(str))
    table = pa.table({"movieId": ids.astype(np.int32), "title": np.char.add(title, ")"), "genres": genres.astype(str)})
    pacsv.write_csv(table, path)
    return ranked[:, 0]


def _write_tags(rng, users, items, timestamp, genre_idx, path: Path) -> None:
    """About one tag per 30 ratings, words tied to the movie's main genre, with MovieLens' messy casing."""
    rows = np.sort(rng.choice(len(users), max(1, len(users) // 30), replace=False))
    word = (genre_idx[items[rows]] * 3 + rng.integers(0, 5, len(rows))) % len(_TAG_WORDS)
    words, titled = np.array(_TAG_WORDS), np.array([w.title() for w in _TAG_WORDS])  # 30 words, not rows
    text = np.where(rng.random(len(rows)) < 0.2, titled[word], words[word])
    table = pa.table({"userId": (users[rows] + 1).astype(np.int32), "movieId": (items[rows] + 1).astype(np.int32),
                      "tag": text, "timestamp": timestamp[rows]})  # fmt: skip
    pacsv.write_csv(table, path)


def ensure_synthetic(
    base_dir: Path, n_users: int, n_items: int, n_ratings: int, with_tags: bool = True, generator_seed: int = 0
) -> Path:
    """The generated release for these settings under ``base_dir``, generated once (complete = has settings.json)."""
    name = f"u{n_users}-i{n_items}-r{n_ratings}-t{int(bool(with_tags))}-s{generator_seed}-v{SYNTHETIC_VERSION}"
    out = Path(base_dir) / name
    if not (out / "settings.json").is_file():
        generate_synthetic(out, int(n_users), int(n_items), int(n_ratings), bool(with_tags), int(generator_seed))
    return out
