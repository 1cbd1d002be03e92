"""Split strategies: partitions, temporal order and ties, small users, fractions, fingerprints, cache, stats."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from recarena.data import splits as S
from recarena.data.corpus import Corpus
from recarena.data.splits import (
    SPLITTERS,
    Split,
    fingerprint,
    load_or_make_split,
    make_split,
    split_stats,
)
from recarena.errors import DataError
from tests.test_curate import make_corpus

CFGS = {
    "temporal": {"name": "temporal", "val_fraction": 0.1, "test_fraction": 0.1, "min_user_ratings": 3},
    "time_cutoff": {"name": "time_cutoff", "val_fraction": 0.1, "test_fraction": 0.1},
    "random": {"name": "random", "val_fraction": 0.1, "test_fraction": 0.1, "per_user": False},
    "random_per_user": {"name": "random", "val_fraction": 0.1, "test_fraction": 0.1, "per_user": True},
    "leave_one_out": {"name": "leave_one_out", "min_user_ratings": 3},
    "users": {"name": "users", "val_fraction": 0.1, "test_fraction": 0.1, "known_fraction": 0.5, "min_user_ratings": 4},
}
PER_USER_TIME = ("temporal", "leave_one_out")


def toy_corpus(seed: int = 0, n_users: int = 120, n_items: int = 60) -> Corpus:
    """Users with 1..40 ratings, timestamps from a small range so many ratings tie."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 41, n_users)
    counts[:5] = [1, 2, 1, 2, 3]  # some users below min_user_ratings
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([rng.choice(n_items, k, replace=False) for k in counts])
    perm = rng.permutation(len(users))  # interleave users as a real file would
    return make_corpus(users[perm], items[perm], rng.integers(1, 6, len(users)), rng.integers(0, 200, len(users)))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return toy_corpus()


def check_partition(split: Split, n: int) -> None:
    parts = [split.train, split.val, split.test, split.known]
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, no duplicates
    allrows = np.concatenate(parts)
    assert len(allrows) == n
    np.testing.assert_array_equal(np.sort(allrows), np.arange(n))  # disjoint and covering


def key(c: Corpus, rows: np.ndarray) -> list[tuple[int, int]]:
    return list(zip(c.timestamps[rows].tolist(), rows.tolist(), strict=True))


@pytest.mark.parametrize("name", list(CFGS))
def test_partition_and_no_test_item_in_train(corpus, name):
    split = make_split(corpus, CFGS[name], seed=0)
    check_partition(split, corpus.n_ratings)
    assert len(split.val) and len(split.test)
    train_pairs = set(zip(corpus.users[split.train].tolist(), corpus.items[split.train].tolist(), strict=True))
    held = set(zip(corpus.users[split.test].tolist(), corpus.items[split.test].tolist(), strict=True))
    assert not train_pairs & held
    assert split.val_users_cold == (name == "users")
    assert (len(split.known) > 0) == (name == "users")


@pytest.mark.parametrize("name", [*PER_USER_TIME, "users"])
def test_per_user_temporal_order(corpus, name):
    split = make_split(corpus, CFGS[name], seed=0)
    before = split.known if name == "users" else split.train
    for u in range(corpus.n_users):
        mine = [p[corpus.users[p] == u] for p in (before, split.val, split.test)]
        b, v, t = (key(corpus, rows) for rows in mine)
        if b and (v or t):
            assert max(b) < min(v + t)
        if v and t:
            assert max(v) < min(t)


def test_time_cutoff_is_global_and_ties_go_later(corpus):
    split = make_split(corpus, CFGS["time_cutoff"], seed=0)
    ts = corpus.timestamps
    assert ts[split.train].max() < ts[split.val].min() <= ts[split.val].max() < ts[split.test].min()
    # with heavy ties the held-out parts are at least the requested share
    assert len(split.test) >= round(0.1 * corpus.n_ratings)
    # all ratings tied at the test cutoff: all of them are test, none in train or val
    c = make_corpus(np.arange(20) % 4, np.arange(20), [3] * 20, [1] * 10 + [5] * 10)
    s = make_split(c, {"name": "time_cutoff", "val_fraction": 0.1, "test_fraction": 0.3}, seed=0)
    np.testing.assert_array_equal(s.test, np.arange(10, 20))
    assert len(s.val) == 0 and len(s.train) == 10


def test_time_cutoff_fractions_with_distinct_times():
    n = 1000
    c = make_corpus(np.arange(n) % 50, np.arange(n) % 70, [3] * n, np.random.default_rng(1).permutation(n))
    s = make_split(c, {"name": "time_cutoff", "val_fraction": 0.15, "test_fraction": 0.1}, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (750, 150, 100)


def test_ties_broken_by_row_order():
    # one user, 10 ratings all at the same time: the last rows are held out, in file order
    c = make_corpus([0] * 10, np.arange(10), [4] * 10, [7] * 10)
    s = make_split(c, {"name": "temporal", "val_fraction": 0.2, "test_fraction": 0.2}, seed=0)
    np.testing.assert_array_equal(s.test, [8, 9])
    np.testing.assert_array_equal(s.val, [6, 7])
    loo = make_split(c, {"name": "leave_one_out"}, seed=0)
    assert loo.test.tolist() == [9] and loo.val.tolist() == [8]
    # a later timestamp wins over a later row
    c2 = make_corpus([0] * 4, np.arange(4), [4] * 4, [5, 9, 5, 5])
    assert make_split(c2, {"name": "leave_one_out"}, seed=0).test.tolist() == [1]


@pytest.mark.parametrize("name", [*PER_USER_TIME, "random_per_user", "users"])
def test_small_users_stay_in_train(corpus, name):
    split = make_split(corpus, CFGS[name], seed=0)
    counts = np.bincount(corpus.users)
    small = counts < CFGS[name].get("min_user_ratings", 3)
    assert small.any()
    in_train = np.isin(np.arange(corpus.n_users)[small], corpus.users[split.train])
    assert in_train.all()
    for part in (split.val, split.test, split.known):
        assert not small[corpus.users[part]].any()


@pytest.mark.parametrize(("n", "n_val", "n_test"), [(3, 1, 1), (10, 1, 1), (25, 3, 3), (35, 4, 4), (40, 4, 4)])
@pytest.mark.parametrize("name", ["temporal", "random_per_user"])
def test_per_user_counts_round_half_up_at_least_one(n, n_val, n_test, name):
    c = make_corpus([0] * n, np.arange(n), [3] * n, np.arange(n))
    s = make_split(c, CFGS[name], seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (n - n_val - n_test, n_val, n_test)


def test_per_user_counts_keep_one_train_rating():
    c = make_corpus([0] * 3, np.arange(3), [3] * 3, np.arange(3))
    s = make_split(c, {"name": "temporal", "val_fraction": 0.45, "test_fraction": 0.45}, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (1, 1, 1)


def test_global_random_fractions_and_seed(corpus):
    s = make_split(corpus, CFGS["random"], seed=0)
    n = corpus.n_ratings
    assert len(s.test) == int(np.floor(0.1 * n + 0.5)) == len(s.val)
    assert make_split(corpus, CFGS["random"], seed=0).fingerprint == s.fingerprint
    assert make_split(corpus, CFGS["random"], seed=1).fingerprint != s.fingerprint
    assert make_split(corpus, {**CFGS["random"], "seed": 0}, seed=1).fingerprint == s.fingerprint


def test_users_split(corpus):
    s = make_split(corpus, CFGS["users"], seed=0)
    counts = np.bincount(corpus.users)
    eligible = int((counts >= 4).sum())
    val_u, test_u = np.unique(corpus.users[s.val]), np.unique(corpus.users[s.test])
    assert len(val_u) == len(test_u) == int(np.floor(0.1 * eligible + 0.5))
    assert not set(val_u) & set(test_u)
    assert not np.isin(np.concatenate([val_u, test_u]), corpus.users[s.train]).any()  # cold
    np.testing.assert_array_equal(np.unique(corpus.users[s.known]), np.union1d(val_u, test_u))
    held = np.bincount(corpus.users[s.known], minlength=corpus.n_users)[np.union1d(val_u, test_u)]
    np.testing.assert_array_equal(held, np.floor(0.5 * counts[np.union1d(val_u, test_u)] + 0.5))
    assert make_split(corpus, CFGS["users"], seed=1).fingerprint != s.fingerprint


@pytest.mark.parametrize("name", list(CFGS))
def test_fingerprint_deterministic_and_pure(corpus, name):
    a, b = make_split(corpus, CFGS[name], seed=3), make_split(corpus, CFGS[name], seed=3)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    parts = {p: getattr(a, p).astype(np.int32).tolist() for p in S.PARTS}  # other dtype / container
    assert fingerprint(a.name, parts) == a.fingerprint
    if name in PER_USER_TIME + ("time_cutoff",):  # deterministic strategies ignore the seed
        assert make_split(corpus, CFGS[name], seed=4).fingerprint == a.fingerprint


def test_fingerprint_golden_value():
    """The digest of a fixed content, written out by hand: it must not depend on machine or numpy version."""
    parts = {"train": [0, 2], "val": [1], "test": [3], "known": []}
    h = hashlib.sha256(b"temporal")
    for p in S.PARTS:
        h.update(f"|{p}:{len(parts[p])}|".encode() + b"".join(i.to_bytes(8, "little") for i in parts[p]))
    assert fingerprint("temporal", parts) == h.hexdigest()[:16]
    assert fingerprint("temporal", {**parts, "val": [3], "test": [1]}) != fingerprint("temporal", parts)


def test_cache_round_trip_and_corrupt_rebuild(corpus, tmp_path, monkeypatch, caplog):
    cfg = CFGS["random"]
    first = load_or_make_split(corpus, cfg, 5, tmp_path, "toy-v1")
    files = list((tmp_path / "splits").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp file left behind

    def boom(*a, **k):
        raise AssertionError("cache not used")

    with monkeypatch.context() as m:
        m.setattr(S, "make_split", boom)
        cached = load_or_make_split(corpus, cfg, 5, tmp_path, "toy-v1")
    assert cached.fingerprint == first.fingerprint and cached.name == "random" and not cached.val_users_cold
    for p in S.PARTS:
        np.testing.assert_array_equal(getattr(cached, p), getattr(first, p))
    data = files[0].read_bytes()
    for bad in (b"garbage", data[: len(data) // 2]):
        files[0].write_bytes(bad)
        rebuilt = load_or_make_split(corpus, cfg, 5, tmp_path, "toy-v1")
        assert rebuilt.fingerprint == first.fingerprint
        assert files[0].read_bytes() == data  # rewritten whole
    assert "rebuilding" in caplog.text
    # other key -> other file; the seed is in the key only where it matters
    path = S.split_cache_path
    assert path(tmp_path, "toy-v1", cfg, 5) != path(tmp_path, "toy-v1", cfg, 6)
    assert path(tmp_path, "toy-v1", cfg, 5) != path(tmp_path, "toy-v2", cfg, 5)
    assert path(tmp_path, "k", CFGS["temporal"], 5) == path(tmp_path, "k", CFGS["temporal"], 6)
    assert load_or_make_split(corpus, cfg, 5, None, "x").fingerprint == first.fingerprint


def test_cache_for_another_corpus_is_rejected(corpus, tmp_path):
    load_or_make_split(corpus, CFGS["temporal"], 0, tmp_path, "same-key")
    small = toy_corpus(seed=1, n_users=30)
    s = load_or_make_split(small, CFGS["temporal"], 0, tmp_path, "same-key")
    check_partition(s, small.n_ratings)


def test_unknown_name_and_bad_fractions(corpus):
    with pytest.raises(ValueError, match="known splits: ") as err:
        make_split(corpus, {"name": "nope"}, seed=0)
    assert all(n in str(err.value) for n in SPLITTERS)
    with pytest.raises(ValueError, match="val_fraction"):
        make_split(corpus, {"name": "temporal", "val_fraction": 0.6, "test_fraction": 0.5}, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(corpus, {"name": "random", "test_fraction": 1.0}, seed=0)


def test_empty_test_raises():
    c = make_corpus([0, 0, 1, 2], [0, 1, 0, 1], [3] * 4, [1, 2, 3, 4])
    with pytest.raises(DataError, match="left test empty"):
        make_split(c, CFGS["temporal"], seed=0)


def test_defaults_and_omegaconf(corpus):
    from omegaconf import OmegaConf

    a = make_split(corpus, {}, seed=0)
    b = make_split(corpus, OmegaConf.create({**CFGS["temporal"], "seed": None}), seed=9)
    assert a.name == "temporal" and a.fingerprint == b.fingerprint


@pytest.mark.parametrize("name", ["temporal", "users"])
def test_split_stats(corpus, name):
    s = make_split(corpus, CFGS[name], seed=0)
    stats = split_stats(corpus, s)
    assert json.loads(json.dumps(stats)) == stats
    assert sum(stats[p]["ratings"] for p in S.PARTS if p in stats) == stats["ratings"] == corpus.n_ratings
    assert stats["train"]["cold_users"] == stats["train"]["cold_items"] == 0
    if name == "users":
        assert stats["test"]["cold_users"] == stats["test"]["users"] > 0
    else:
        assert stats["test"]["cold_users"] == 0 and "known" not in stats
    from rich.console import Console

    from recarena.display import stats_table

    console = Console(record=True, width=120)
    console.print(stats_table("tiny", name, stats))
    text = console.export_text()
    assert "train" in text and s.fingerprint in text
