"""EvalData: user-sorted storage, vectorised chunk cutting, exact round trip, DDP shards, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from recarena.data.heldout import BATCH_KEYS, MAX_SCORE_CELLS, EvalData, effective_chunk_size
from recarena.errors import DataError


def _random_split(seed: int = 0, n_users: int = 57, n_items: int = 31, n_ex: int = 400, n_ho: int = 150):
    rng = np.random.default_rng(seed)
    ex_u = rng.integers(0, n_users, n_ex)
    ex_i = rng.integers(0, n_items, n_ex)
    # Held-out ratings for only some users, so that users without one must be left out.
    ho_u = rng.choice(rng.choice(n_users, n_users // 2, replace=False), n_ho)
    ho_i = rng.integers(0, n_items, n_ho)
    ho_r = rng.integers(1, 11, n_ho).astype(np.float32) / 2
    return n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r


def _unchunk(chunks) -> tuple[np.ndarray, ...]:
    """Concatenate the chunks back into flat (user, item[, rating]) arrays."""
    ex_u, ex_i, ho_u, ho_i, ho_r, users = [], [], [], [], [], []
    for b in chunks:
        assert set(b) == set(BATCH_KEYS)
        u = b["users"].numpy()
        users.append(u)
        ex_u.append(u[b["excl_row"].numpy()])
        ex_i.append(b["excl_item"].numpy())
        ho_u.append(u[b["held_row"].numpy()])
        ho_i.append(b["held_item"].numpy())
        ho_r.append(b["held_rating"].numpy())
    return tuple(np.concatenate(x) for x in (users, ex_u, ex_i, ho_u, ho_i, ho_r))


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_batches_round_trip_exactly(chunk: int) -> None:
    n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r = _random_split()
    data = EvalData(n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r)
    users, got_ex_u, got_ex_i, got_ho_u, got_ho_i, got_ho_r = _unchunk(data.batches(chunk))

    # Evaluated users: exactly those with a held-out rating, ascending, each once.
    np.testing.assert_array_equal(users, np.unique(ho_u))
    assert data.n_users_eval == np.unique(ho_u).size
    # Held-out pairs come back exactly, in stable user order (input order kept within a user).
    order = np.argsort(ho_u, kind="stable")
    np.testing.assert_array_equal(got_ho_u, ho_u[order])
    np.testing.assert_array_equal(got_ho_i, ho_i[order])
    np.testing.assert_array_equal(got_ho_r, ho_r[order])
    # Exclusions come back for evaluated users only (others are never ranked), also in stable order.
    keep = np.isin(ex_u, users)
    order = np.argsort(ex_u[keep], kind="stable")
    np.testing.assert_array_equal(got_ex_u, ex_u[keep][order])
    np.testing.assert_array_equal(got_ex_i, ex_i[keep][order])


@pytest.mark.parametrize(("chunk", "rank", "world"), [(1, 0, 1), (7, 0, 1), (5, 1, 3), (10_000, 0, 1)])
def test_each_chunk_is_the_per_user_gather_of_its_users(chunk: int, rank: int, world: int) -> None:
    """Chunks are slices of columns laid out once; each must equal the per-chunk gather of its users
    (``batch_for``), and be views of those columns: cutting a chunk copies no pair (on a GPU: none per chunk)."""
    data = EvalData(*_random_split(seed=3))
    chunks = data.batches(chunk, rank=rank, world_size=world, device="cpu")
    for batch in chunks:
        expected = data.batch_for(batch["users"].numpy())
        assert set(batch) == set(expected)
        for key, value in expected.items():
            assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
        for key in ("users", "excl_item", "held_item", "held_rating"):
            assert batch[key].untyped_storage().data_ptr() == chunks._columns[key].untyped_storage().data_ptr()


def test_batch_dtypes_and_rows() -> None:
    data = EvalData(4, 5, [0, 2, 2, 3], [1, 0, 4, 2], [2, 0, 2], [3, 2, 1], [5.0, 4.0, 3.5])
    (b,) = list(data.batches(10))
    assert {k: v.dtype for k, v in b.items()} == {
        "users": torch.int64,
        "excl_row": torch.int64,
        "excl_item": torch.int64,
        "held_row": torch.int64,
        "held_item": torch.int64,
        "held_rating": torch.float32,
    }
    assert b["users"].tolist() == [0, 2]  # users 1 and 3 have no held-out rating
    assert b["excl_row"].tolist() == [0, 1, 1]
    assert b["excl_item"].tolist() == [1, 0, 4]
    assert b["held_row"].tolist() == [0, 1, 1]
    assert b["held_item"].tolist() == [2, 3, 1]
    assert b["held_rating"].tolist() == [4.0, 5.0, 3.5]


def test_chunk_size_cap_and_count() -> None:
    assert effective_chunk_size(2048, 1682) == 2048
    assert effective_chunk_size(2048, 100_000) == MAX_SCORE_CELLS // 100_000
    assert effective_chunk_size(2048, 10**9) == 1  # never zero
    with pytest.raises(ValueError, match="user_chunk"):
        effective_chunk_size(0, 10)
    n_users, n_items, *arrays = _random_split()
    data = EvalData(n_users, n_items, *arrays)
    chunks = data.batches(2048, max_cells=5 * n_items)  # cap -> 5 users per chunk
    assert chunks.chunk_size == 5
    assert len(chunks) == -(-data.n_users_eval // 5)
    assert all(len(b["users"]) <= 5 for b in chunks)


def test_dataloader_batch_size_none_serves_chunks() -> None:
    n_users, n_items, *arrays = _random_split(seed=3)
    chunks = EvalData(n_users, n_items, *arrays).batches(6)
    served = list(DataLoader(chunks, batch_size=None, shuffle=False))
    assert len(served) == len(chunks)
    for a, b in zip(served, chunks, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in BATCH_KEYS)


def test_rank_shards_are_disjoint_and_complete() -> None:
    n_users, n_items, *arrays = _random_split(seed=4)
    data = EvalData(n_users, n_items, *arrays)
    shards = [
        np.concatenate([b["users"].numpy() for b in data.batches(3, rank=r, world_size=3)]) for r in range(3)
    ]
    everything = np.concatenate(shards)
    assert everything.size == data.n_users_eval  # no user repeated (unlike DistributedSampler padding)
    np.testing.assert_array_equal(np.sort(everything), data.users)
    with pytest.raises(ValueError, match="rank"):
        data.batches(3, rank=3, world_size=3)


def test_no_heldout_gives_no_chunks() -> None:
    data = EvalData(3, 4, [0, 1], [1, 2], [], [], [])
    assert data.n_users_eval == 0
    assert len(data.batches(8)) == 0
    assert list(data.batches(8)) == []


def test_chunk_index_out_of_range() -> None:
    chunks = EvalData(3, 4, [], [], [0, 2], [1, 1], [4.0, 5.0]).batches(1)
    assert len(chunks) == 2
    with pytest.raises(IndexError):
        chunks[2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exclude_items": [0, 9]}, "exclude_items holds index 9"),
        ({"heldout_users": [0, -1]}, "heldout_users holds index -1"),
        ({"exclude_users": [0]}, "differ in length"),
        ({"heldout_ratings": [4.0]}, "differ in shape"),
        ({"heldout_ratings": [4.0, float("nan")]}, "NaN"),
        ({"heldout_items": [0.5, 1.0]}, "integer"),
    ],
)
def test_bad_input_raises_data_error(kwargs: dict, match: str) -> None:
    args = {
        "n_users": 3,
        "n_items": 4,
        "exclude_users": [0, 1],
        "exclude_items": [0, 3],
        "heldout_users": [0, 2],
        "heldout_items": [1, 2],
        "heldout_ratings": [4.0, 5.0],
    }
    args.update(kwargs)
    with pytest.raises(DataError, match=match):
        EvalData(**args)


def test_max_users_scores_a_seeded_sample_of_the_evaluated_users() -> None:
    n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r = _random_split(n_users=400, n_ho=900)
    full = EvalData(n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r)
    sample = EvalData(n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r, max_users=50, seed=3)
    again = EvalData(n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r, max_users=50, seed=3)
    other = EvalData(n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r, max_users=50, seed=4)
    assert sample.n_users_eval == 50 and sample.n_users_all == full.n_users_eval > 50
    assert np.isin(sample.users, full.users).all() and (np.diff(sample.users) > 0).all()
    np.testing.assert_array_equal(sample.users, again.users)  # same split and seed: the same users
    assert not np.array_equal(sample.users, other.users)
    users, *_ = _unchunk(sample.batches(16))
    np.testing.assert_array_equal(users, sample.users)  # only the sampled users are scored
    bigger = EvalData(n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r, max_users=10_000)
    np.testing.assert_array_equal(bigger.users, full.users)  # a cap above the count changes nothing
