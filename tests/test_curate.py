"""Curation knobs: each one, their documented one-pass order, determinism, cache key, empty-result errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recarena.data.corpus import Corpus, RatingScale
from recarena.data.curate import curate, curation_key
from recarena.errors import DataError

NONE = {"min_item_ratings": 0, "min_user_ratings": 0, "min_item_mean": None, "max_users": None, "fraction": 1.0}


def make_corpus(users, items, ratings, timestamps) -> Corpus:
    """A small Corpus built directly (ids offset from indices so a re-indexing bug shows)."""
    users, items = np.asarray(users, dtype=np.int32), np.asarray(items, dtype=np.int32)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    item_table = pd.DataFrame(
        {
            "movie_id": np.arange(n_items, dtype=np.int64) + 100,
            "title": [f"m{i}" for i in range(n_items)],
            "year": pd.array([2000] * n_items, dtype="Int64"),
            "genres": ["Drama"] * n_items,
        }
    )
    return Corpus(
        name="toy",
        users=users,
        items=items,
        ratings=np.asarray(ratings, dtype=np.float32),
        timestamps=np.asarray(timestamps, dtype=np.int64),
        user_ids=np.arange(n_users, dtype=np.int64) + 1000,
        item_table=item_table,
        genre_names=["Drama"],
        genres=np.ones((n_items, 1), dtype=np.uint8),
        scale=RatingScale(0.5, 5.0, 0.5),
    )


def random_corpus(n_users: int = 80, n_items: int = 50, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    pairs = np.flatnonzero(rng.random(n_users * n_items) < 0.3)
    users, items = np.divmod(pairs, n_items)
    ratings = rng.integers(1, 11, len(pairs)) / 2
    return make_corpus(users, items, ratings, rng.integers(0, 1000, len(pairs)))


def triples(c: Corpus) -> set[tuple[int, int, int]]:
    """(original user id, original movie id, timestamp) of every rating: survives re-indexing."""
    return set(zip(c.user_ids[c.users].tolist(), c.item_ids[c.items].tolist(), c.timestamps.tolist(), strict=True))


def test_no_knob_returns_the_corpus_itself():
    c = random_corpus()
    assert curate(c, NONE, seed=1) is c
    assert curate(c, {}, seed=1) is c
    assert curation_key(NONE, 1) == "none"


def test_min_item_ratings():
    c = random_corpus()
    out = curate(c, {**NONE, "min_item_ratings": 25}, seed=0)
    counts = np.bincount(c.items, minlength=c.n_items)
    assert out.n_items == int((counts >= 25).sum())
    assert np.bincount(out.items).min() >= 25
    assert out.n_ratings == int(counts[counts >= 25].sum())
    assert triples(out) <= triples(c)


def test_min_item_mean():
    # item 0 mean 4.5, item 1 mean 2.0, item 2 mean 3.5 (exactly the threshold: kept)
    c = make_corpus([0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 2, 2], [4, 5, 1, 3, 3, 4], [1, 2, 3, 4, 5, 6])
    out = curate(c, {**NONE, "min_item_mean": 3.5}, seed=0)
    assert sorted(out.item_ids.tolist()) == [100, 102]
    assert out.n_ratings == 4


def test_min_item_mean_reads_only_the_earliest_known_share_of_the_ratings():
    # Item 0 is rated 2 early and 5, 5 late; item 1 4, 4, 4 early and 1, 1 late; item 2 only late. Over all the
    # ratings item 0 (mean 4) passes 3.5 and item 1 (2.8) fails: that reads the held-out (late) outcomes. Over the
    # earliest 4 of the 9 (what a time-ordered split trains on) item 0 (2) fails, item 1 (4) passes with all its
    # ratings, and item 2 has no known mean.
    c = make_corpus(range(9), [0, 1, 1, 1, 0, 0, 1, 1, 2], [2, 4, 4, 4, 5, 5, 1, 1, 5], range(1, 10))
    assert sorted(curate(c, {**NONE, "min_item_mean": 3.5}, seed=0).item_ids.tolist()) == [100, 102]
    early = curate(c, {**NONE, "min_item_mean": 3.5}, seed=0, known_share=0.45)
    assert early.item_ids.tolist() == [101] and early.n_ratings == 5
    assert curation_key({**NONE, "min_item_mean": 3.5}, 0, 0.5) != curation_key({**NONE, "min_item_mean": 3.5}, 0, 0.8)
    assert curation_key({**NONE, "min_item_ratings": 2}, 0, 0.5) == curation_key({**NONE, "min_item_ratings": 2}, 0)


def test_the_datamodule_curates_on_the_split_s_training_share(make_cfg, monkeypatch: pytest.MonkeyPatch):
    from recarena.build import build_datamodule
    from recarena.data import datamodule

    seen: list[float] = []
    real = datamodule.curate
    monkeypatch.setattr(datamodule, "curate", lambda *args: seen.append(args[3]) or real(*args))
    cfg = make_cfg("data.curation.min_item_mean=3.0", "split=temporal", "split.val_fraction=0.2",
                   "split.test_fraction=0.1")  # fmt: skip
    build_datamodule(cfg, "pairs").setup("fit")
    assert seen == [pytest.approx(0.7)]


def test_min_user_ratings_counts_after_item_filters_in_one_pass():
    # user 0: items 0, 1, 2; item 2 is rare (only user 0) so the item filter leaves user 0 with 2 ratings.
    # user 1: items 0, 1, 3; user 2: items 0, 3 (2 ratings, dropped) -> item 3 then has 1 rating but stays:
    # one pass, item filters are not re-applied after the user filter.
    users = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    items = [0, 1, 2, 0, 1, 3, 0, 3, 0, 1, 4]
    c = make_corpus(users, items, [4] * 11, range(11))
    out = curate(c, {**NONE, "min_item_ratings": 2, "min_user_ratings": 3}, seed=0)
    assert sorted(out.user_ids.tolist()) == [1001]  # user 3's item 4 was rare too
    assert sorted(out.item_ids.tolist()) == [100, 101, 103]
    assert np.bincount(out.items).min() == 1  # below min_item_ratings after the user filter, by design


def test_max_users_samples_among_filtered_users_deterministically():
    c = random_corpus(n_users=200)
    cfg = {**NONE, "min_user_ratings": 15, "max_users": 30}
    a, b = curate(c, cfg, seed=7), curate(c, cfg, seed=7)
    assert a.n_users == 30
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    assert not np.array_equal(a.user_ids, curate(c, cfg, seed=8).user_ids)
    # cfg.seed overrides the run seed
    np.testing.assert_array_equal(curate(c, {**cfg, "seed": 7}, seed=99).user_ids, a.user_ids)
    # every sampled user passed the user filter (it runs first), with all their ratings kept
    full = np.bincount(c.users, minlength=c.n_users)[a.user_ids - 1000]
    assert full.min() >= 15
    np.testing.assert_array_equal(np.bincount(a.users), full)
    # more users asked for than exist: all kept
    assert curate(c, {**NONE, "max_users": 10_000}, seed=0).n_ratings == c.n_ratings


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_fraction_keeps_that_share_in_file_order(fraction):
    c = random_corpus()
    out = curate(c, {**NONE, "fraction": fraction}, seed=3)
    assert out.n_ratings == int(np.floor(fraction * c.n_ratings + 0.5))
    assert triples(out) <= triples(c)
    # the sample is in the original row order (file order breaks timestamp ties downstream)
    key = {t: i for i, t in enumerate(zip(c.user_ids[c.users].tolist(), c.item_ids[c.items].tolist(), strict=True))}
    pos = [key[t] for t in zip(out.user_ids[out.users].tolist(), out.item_ids[out.items].tolist(), strict=True)]
    assert pos == sorted(pos)
    again = curate(c, {**NONE, "fraction": fraction}, seed=3)
    assert triples(again) == triples(out)


def test_fraction_runs_after_user_filter():
    c = random_corpus(n_users=100)
    out = curate(c, {**NONE, "min_user_ratings": 15, "fraction": 0.2}, seed=0)
    kept = np.bincount(c.users, minlength=c.n_users) >= 15
    assert set(out.user_ids.tolist()) <= set((np.flatnonzero(kept) + 1000).tolist())
    assert out.n_ratings == int(np.floor(0.2 * np.bincount(c.users)[kept].sum() + 0.5))
    assert np.bincount(out.users).min() < 15  # fraction thins users below the filter: one pass, documented


@pytest.mark.parametrize(
    ("cfg", "knob"),
    [
        ({"min_item_ratings": 10_000}, "min_item_ratings"),
        ({"min_item_mean": 6.0}, "min_item_mean"),
        ({"min_user_ratings": 10_000}, "min_user_ratings"),
        ({"min_item_ratings": 1, "min_user_ratings": 10_000}, "min_user_ratings"),
        ({"fraction": 1e-9}, "fraction"),
    ],
)
def test_empty_result_names_the_knob(cfg, knob):
    with pytest.raises(DataError, match=f"data.curation.{knob}="):
        curate(random_corpus(), {**NONE, **cfg}, seed=0)


@pytest.mark.parametrize(
    "cfg", [{"fraction": 0.0}, {"fraction": 1.5}, {"max_users": 0}, {"min_user_ratings": -1}]
)
def test_invalid_knobs_raise(cfg):
    with pytest.raises(ValueError, match="data.curation"):
        curate(random_corpus(), {**NONE, **cfg}, seed=0)


def test_curation_key():
    filt = {**NONE, "min_item_ratings": 5}
    samp = {**NONE, "fraction": 0.5}
    assert curation_key(filt, 1) == curation_key(filt, 2) != curation_key(NONE, 1)  # filters ignore the seed
    assert curation_key(samp, 1) != curation_key(samp, 2)
    assert curation_key({**samp, "seed": 5}, 1) == curation_key({**samp, "seed": 5}, 2)
    assert curation_key(samp, 1) == curation_key(dict(samp), 1)
    assert len(curation_key(samp, 1)) == 16


def test_omegaconf_config_is_accepted():
    from omegaconf import OmegaConf

    c = random_corpus()
    cfg = OmegaConf.create({**NONE, "max_users": 10, "seed": None})
    assert curate(c, cfg, seed=4).n_users == 10
    assert curation_key(cfg, 4) == curation_key({**NONE, "max_users": 10}, 4)
