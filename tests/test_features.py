"""Time-respecting user contexts (checked against a brute-force reference), item side features, id hashing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recarena.data.corpus import Corpus, RatingScale
from recarena.data.features import (
    BLOCK,
    YEAR_BUCKETS,
    ContextArrays,
    build_context_arrays,
    collision_rates,
    hashed_rows,
    item_feature_width,
    item_features,
)
from recarena.data.splits import Split, make_split
from recarena.models.towers import ContextLookup
from tests.data_factories import tag_applications

N_CONTEXT, THRESHOLD = 7, 3.5


def feature_corpus(seed: int = 0, n_users: int = 30, n_items: int = 80) -> Corpus:
    """Users with 1..90 ratings (several past 2 x BLOCK), 3 genres, few distinct timestamps (many ties)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 91, n_users).clip(max=n_items)
    counts[:3] = [1, 2, 2 * BLOCK + 3]
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([rng.choice(n_items, k, replace=False) for k in counts])
    perm = rng.permutation(len(users))
    years = [1915, 1957, 1999, 2024, None] * (n_items // 5)
    item_table = pd.DataFrame({"movie_id": np.arange(n_items, dtype=np.int64) * 7 + 3, "title": "m",
                               "year": pd.array(years, dtype="Int64"), "genres": ""})  # fmt: skip
    tags = tag_applications([0, 0, 1, 2, 5], ["a", "b", "a", "c", "c"], [5, 1, 2, 9, 1])
    return Corpus(
        name="toy", users=users[perm].astype(np.int32), items=items[perm].astype(np.int32),
        ratings=(rng.integers(2, 11, len(users)) / 2).astype(np.float32)[perm],
        timestamps=rng.integers(0, 25, len(users)).astype(np.int64)[perm],
        user_ids=np.arange(n_users, dtype=np.int64), item_table=item_table, genre_names=["A", "B", "C"],
        genres=(rng.random((n_items, 3)) < 0.4).astype(np.uint8), scale=RatingScale(0.5, 5.0, 0.5), tags=tags,
    )  # fmt: skip


def lookup_of(arrays: ContextArrays, corpus: Corpus) -> ContextLookup:
    lookup = ContextLookup(corpus.n_users, corpus.n_items, len(corpus.genre_names))
    lookup.load(arrays)
    return lookup


def before(corpus: Corpus, inputs: np.ndarray, row: int | None, user: int) -> np.ndarray:
    """Brute force: the user's input rows strictly before ``row`` in (timestamp, row) order (all when None)."""
    mine = inputs[corpus.users[inputs] == user]
    if row is None:
        return mine
    key = (corpus.timestamps[row], row)
    return np.array([r for r in mine if (corpus.timestamps[r], r) < key], dtype=np.int64)


def queries(corpus: Corpus, split: Split, lookup: ContextLookup) -> list[tuple[int, int | None, int]]:
    """(user, row or None for evaluation, end) of every training row and every user."""
    ends = lookup.train_ends(torch.as_tensor(split.train)).tolist()
    out = [(int(corpus.users[r]), int(r), e) for r, e in zip(split.train, ends, strict=True)]
    users = np.arange(corpus.n_users)
    return out + [(int(u), None, int(e)) for u, e in zip(users, lookup.eval_ends(torch.as_tensor(users)), strict=True)]


@pytest.fixture(scope="module", params=["temporal", "random", "users"])
def case(request) -> tuple[Corpus, Split, ContextArrays, ContextLookup]:
    corpus = feature_corpus()
    split = make_split(corpus, {"name": request.param, "min_user_ratings": 3}, seed=1)
    arrays = build_context_arrays(corpus, split.train, split.known, N_CONTEXT, THRESHOLD)
    return corpus, split, arrays, lookup_of(arrays, corpus)


def test_sums_match_brute_force(case) -> None:
    corpus, split, _, lookup = case
    inputs = np.concatenate([split.train, split.known])
    qs = queries(corpus, split, lookup)
    users, ends = torch.tensor([q[0] for q in qs]), torch.tensor([q[2] for q in qs])
    count, rating_sum, genre_sum, genre_count = (t.numpy() for t in lookup.sums(users, ends))
    for k, (user, row, _) in enumerate(qs):
        rows = before(corpus, inputs, row, user)
        r, g = corpus.ratings[rows].astype(np.float64), corpus.genres[corpus.items[rows]].astype(np.float64)
        assert count[k] == len(rows)
        np.testing.assert_allclose(rating_sum[k], r.sum(), atol=1e-4)
        np.testing.assert_allclose(genre_sum[k], r @ g, atol=1e-4)
        np.testing.assert_allclose(genre_count[k], g.sum(0), atol=1e-4)


def test_context_items_and_recent_positives_match_brute_force(case) -> None:
    corpus, split, arrays, lookup = case
    inputs = np.concatenate([split.train, split.known])
    popularity = np.bincount(corpus.items[split.train], minlength=corpus.n_items)
    assert (np.sort(popularity[arrays.context_items]) == np.sort(popularity)[-N_CONTEXT:]).all()
    qs = queries(corpus, split, lookup)
    users, ends = torch.tensor([q[0] for q in qs]), torch.tensor([q[2] for q in qs])
    index, rating, bag = lookup.context_bag(users, ends)
    length = 4
    recent, mask = lookup.recent_positives(users, ends, length)
    for k, (user, row, _) in enumerate(qs):
        rows = before(corpus, inputs, row, user)
        ctx = rows[np.isin(corpus.items[rows], arrays.context_items)]
        expected = {(int(np.flatnonzero(arrays.context_items == corpus.items[r])[0]), float(corpus.ratings[r])) for r in ctx}
        assert {(int(i), float(v)) for i, v in zip(index[bag == k], rating[bag == k], strict=True)} == expected
        ordered = sorted(rows, key=lambda r: (corpus.timestamps[r], r))
        positives = [int(corpus.items[r]) for r in ordered if corpus.ratings[r] >= THRESHOLD][-length:]
        assert recent[k][mask[k]].tolist() == positives


def test_features_never_read_validation_or_test_ratings(case) -> None:
    """Rewrite every validation and test rating (value and time): every table is unchanged."""
    corpus, split, arrays, _ = case
    held = np.concatenate([split.val, split.test])
    ratings, timestamps = corpus.ratings.copy(), corpus.timestamps.copy()
    ratings[held] = 6.0 - ratings[held]
    timestamps[held] = -timestamps[held] - 1  # held-out ratings now come first in time
    changed = Corpus(**{**corpus.__dict__, "ratings": ratings, "timestamps": timestamps})
    again = build_context_arrays(changed, split.train, split.known, N_CONTEXT, THRESHOLD)
    for name, value in arrays.__dict__.items():
        np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)


def test_label_context_is_strictly_before_it_ties_broken_by_row() -> None:
    # One user, four ratings at times 5, 5, 3, 9 (file rows 0..3): order by (time, row) is rows 2, 0, 1, 3.
    corpus = feature_corpus()
    corpus = Corpus(**{**corpus.__dict__, "users": np.zeros(4, np.int32), "items": np.arange(4, dtype=np.int32),
                       "ratings": np.array([1, 2, 4, 5], np.float32), "timestamps": np.array([5, 5, 3, 9])})  # fmt: skip
    rows = np.arange(4)
    lookup = lookup_of(build_context_arrays(corpus, rows, rows[:0], N_CONTEXT, THRESHOLD), corpus)
    count, rating_sum, *_ = lookup.sums(torch.zeros(4, dtype=torch.long), lookup.train_ends(torch.as_tensor(rows)))
    assert count.tolist() == [1, 2, 0, 3]
    assert rating_sum.tolist() == [4.0, 5.0, 0.0, 7.0]  # row 0 sees row 2; row 1 sees rows 2 and 0; ...
    with pytest.raises(ValueError, match="not input rows"):
        lookup_of(build_context_arrays(corpus, rows[:2], rows[:0], N_CONTEXT, THRESHOLD), corpus).train_ends(
            torch.tensor([3])
        )


def test_held_out_users_are_described_by_their_known_ratings_only() -> None:
    corpus = feature_corpus()
    split = make_split(corpus, {"name": "users", "min_user_ratings": 4}, seed=3)
    lookup = lookup_of(build_context_arrays(corpus, split.train, split.known, N_CONTEXT, THRESHOLD), corpus)
    held = np.unique(corpus.users[split.test])
    count, rating_sum, *_ = lookup.sums(torch.as_tensor(held), lookup.eval_ends(torch.as_tensor(held)))
    for k, user in enumerate(held):
        known = split.known[corpus.users[split.known] == user]
        assert count[k] == len(known) > 0 and rating_sum[k] == pytest.approx(corpus.ratings[known].sum())


def test_empty_lookup_gives_empty_contexts() -> None:
    lookup = ContextLookup(n_users=3, n_items=5, n_genres=2)
    users = torch.tensor([0, 2])
    ends = lookup.eval_ends(users)
    assert [t.abs().sum().item() for t in lookup.sums(users, ends)] == [0, 0, 0, 0]
    assert len(lookup.context_bag(users, ends)[0]) == 0
    assert not lookup.recent_positives(users, ends, 3)[1].any()


def test_item_features_blocks() -> None:
    corpus = feature_corpus()
    full = item_features(corpus, ["genres", "year", "tags"], n_tags=2)
    assert full.shape == (corpus.n_items, item_feature_width(["genres", "year", "tags"], 3, 2)) == (80, 3 + YEAR_BUCKETS + 2)
    np.testing.assert_array_equal(full[:, :3], corpus.genres)
    year = full[:, 3 : 3 + YEAR_BUCKETS]
    assert (year.sum(1) == 1).all()
    assert year[4, 0] == 1 and year[0, 1] == 1 and year[3, YEAR_BUCKETS - 1] == 1  # unknown, <= 1920, >= 2020
    assert year[2, 1 + (1999 - 1920) // 5] == 1
    tags = full[:, -2:]  # the two most applied tags: c (10), a (7); b (1) is left out
    assert tags[[2, 5], 0].tolist() == [1, 1] and tags[[0, 1], 1].tolist() == [1, 1] and tags.sum() == 4
    no_tags = Corpus(**{**corpus.__dict__, "tags": None})
    assert item_features(no_tags, ["tags"], n_tags=5).shape == (80, 5) and item_features(no_tags, ["tags"], 5).sum() == 0
    assert item_features(corpus, ["item_id"], 5).shape == (80, 0)


def test_hashing_is_deterministic_in_range_and_counts_collisions() -> None:
    keys = np.arange(1000, dtype=np.uint64) * 13 + 5
    rows = hashed_rows(keys, n_tables=3, size=256)
    assert rows.shape == (1000, 3) and (rows == hashed_rows(keys, 3, 256)).all()
    for t in range(3):
        assert rows[:, t].min() >= t * 256 and rows[:, t].max() < (t + 1) * 256
    per_table, full = collision_rates(rows)
    assert 0.9 < per_table <= 1.0 and full < 0.01  # 1000 keys into 256 rows collide; triples almost never
    assert collision_rates(hashed_rows(keys, 2, 1 << 16))[0] < 0.05
    assert collision_rates(np.array([[0], [0], [1]])) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
