"""Held-out evaluation data cut into *user chunks* that Lightning's validation/test loops can iterate.

Full-catalog ranking scores every item for every evaluated user, so memory is ``chunk x n_items`` scores;
evaluating a few thousand users at a time keeps that bounded on ML-25M/32M while staying vectorised.

:class:`EvalData` is built once per split from flat numpy arrays. It sorts both the exclusion pairs and the
held-out ratings by user (stable, so each user's entries keep their input order) and keeps CSR-style
``indptr`` offsets, so cutting a chunk is a handful of vectorised numpy gathers (``np.repeat`` on the
``indptr`` differences), never a Python loop over users.

Batch contract (one dict per chunk, CPU tensors; Lightning moves them to the model's device)::

    users:       (B,) int64    the chunk's user indices (users with at least one held-out rating), ascending
    excl_row:    (E,) int64    row within the chunk (0..B-1) of each item to exclude from ranking
    excl_item:   (E,) int64    the excluded item
    held_row:    (H,) int64    row within the chunk of each held-out rating
    held_item:   (H,) int64    the held-out item
    held_rating: (H,) float32  its rating

What to exclude is the caller's choice (the datamodule passes the user's training items for validation,
training + validation items for test, plus the ``known`` items of held-out users); :class:`EvalData` only
stores and slices it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from recarena.errors import DataError

#: Upper bound on ``chunk x n_items`` score cells per chunk (2**26 ~ 67M: 256 MiB of float32 scores plus
#: two bool masks), whatever ``eval.user_chunk`` asks for.
MAX_SCORE_CELLS = 2**26

BATCH_KEYS = ("users", "excl_row", "excl_item", "held_row", "held_item", "held_rating")


def effective_chunk_size(user_chunk: int, n_items: int, max_cells: int = MAX_SCORE_CELLS) -> int:
    """Users per chunk: ``user_chunk`` capped so that ``chunk * n_items <= max_cells`` (at least 1)."""
    if int(user_chunk) < 1:
        raise ValueError(
            f"eval.user_chunk must be a positive integer, got {user_chunk!r}: set it to e.g. 2048"
        )
    return max(1, min(int(user_chunk), max_cells // max(int(n_items), 1)))


def _as_index(name: str, values: Any, upper: int) -> np.ndarray:
    """A 1-D int64 copy of ``values`` checked to lie in ``[0, upper)``."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"EvalData: {name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"EvalData: {name} must hold integer indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        bad = arr[(arr < 0) | (arr >= upper)][0]
        raise DataError(
            f"EvalData: {name} holds index {bad} outside [0, {upper}): build the arrays from the same "
            f"contiguous user/item indexing as the split"
        )
    return arr


def _by_user(users: np.ndarray, n_users: int, *columns: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """CSR layout by user: ``indptr`` (n_users + 1,) and the columns sorted by user. The sort is stable, so a
    user's entries stay in input order and batches round-trip exactly."""
    order = np.argsort(users, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))]).astype(np.int64)
    return indptr, tuple(column[order] for column in columns)


def _gather(indptr: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows within the chunk and positions in the user-sorted arrays of every entry of ``users``.

    With ``counts = indptr[u+1] - indptr[u]`` the entries of chunk row ``r`` are the positions
    ``indptr[u_r] .. indptr[u_r+1]-1``; laid end to end they are ``arange(total)`` shifted, per row, by
    ``indptr[u_r] - (offset of row r in the output)`` -- one ``np.repeat`` each, no loop over users.
    """
    starts = indptr[users]
    counts = indptr[users + 1] - starts
    rows = np.repeat(np.arange(users.size, dtype=np.int64), counts)
    out_offsets = np.cumsum(counts) - counts
    positions = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - out_offsets, counts)
    return rows, positions


class EvalData:
    """The exclusion and held-out (user, item[, rating]) pairs of one evaluation split, sorted by user.

    Args:
        n_users, n_items: sizes of the contiguous user / item indexing.
        exclude_users, exclude_items: pairs never to rank for that user (training items, ...). Duplicates
            are harmless.
        heldout_users, heldout_items, heldout_ratings: the held-out ratings to score against.

    Only users with at least one held-out rating are evaluated (:attr:`users`, ascending). A held-out item
    that is also excluded stays in the user's relevant set but can never be recommended (a miss), which
    is the conservative reading; the split should not produce such overlaps.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        exclude_users: Any,
        exclude_items: Any,
        heldout_users: Any,
        heldout_items: Any,
        heldout_ratings: Any,
        max_users: int | None = None,
        seed: int = 0,
    ) -> None:
        if int(n_users) < 0 or int(n_items) < 1:
            raise DataError(f"EvalData: need n_users >= 0 and n_items >= 1, got {n_users}, {n_items}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        ex_u, ex_i, ho_u, ho_i, ho_r = self._checked(exclude_users, exclude_items, heldout_users, heldout_items,
                                                     heldout_ratings)  # fmt: skip
        self._ex_indptr, (self._ex_item,) = _by_user(ex_u, self.n_users, ex_i)
        self._ho_indptr, (self._ho_item, self._ho_rating) = _by_user(ho_u, self.n_users, ho_i, ho_r)
        users = np.flatnonzero(np.diff(self._ho_indptr) > 0).astype(np.int64)
        self.n_users_all = int(users.size)
        if max_users is not None and users.size > int(max_users):
            # A uniform sample keeps every metric an unbiased estimate of its all-user mean (users are the unit).
            users = np.sort(np.random.default_rng([seed, 7]).choice(users, int(max_users), replace=False))
        self._users = users

    def _checked(self, exclude_users: Any, exclude_items: Any, heldout_users: Any, heldout_items: Any,
                 heldout_ratings: Any) -> tuple[np.ndarray, ...]:  # fmt: skip
        """The five columns as index / float32 arrays, in range and of matching shapes, else a :class:`DataError`."""
        ex_u = _as_index("exclude_users", exclude_users, self.n_users)
        ex_i = _as_index("exclude_items", exclude_items, self.n_items)
        ho_u = _as_index("heldout_users", heldout_users, self.n_users)
        ho_i = _as_index("heldout_items", heldout_items, self.n_items)
        ho_r = np.asarray(heldout_ratings, dtype=np.float32)
        if ex_u.shape != ex_i.shape:
            raise DataError(
                f"EvalData: exclude_users and exclude_items differ in length ({ex_u.size} vs {ex_i.size})"
            )
        if not (ho_u.shape == ho_i.shape == ho_r.shape):
            raise DataError(
                "EvalData: heldout_users, heldout_items and heldout_ratings differ in shape "
                f"({ho_u.shape}, {ho_i.shape}, {ho_r.shape})"
            )
        if ho_r.size and not np.isfinite(ho_r).all():
            raise DataError(
                "EvalData: heldout_ratings holds NaN or infinite values: drop or fix those ratings"
            )
        return ex_u, ex_i, ho_u, ho_i, ho_r

    @property
    def users(self) -> np.ndarray:
        """Evaluated users (at least one held-out rating), ascending."""
        return self._users

    @property
    def n_users_eval(self) -> int:
        """Number of evaluated users."""
        return int(self._users.size)

    @property
    def pair_bytes(self) -> int:
        """Bytes of the evaluation columns of every chunk (:class:`EvalChunks`): users, excluded and held-out
        pairs."""
        return 8 * self._users.size + 16 * self._ex_item.size + 20 * self._ho_item.size

    @property
    def n_heldout(self) -> int:
        """Number of held-out ratings."""
        return int(self._ho_item.size)

    def batch_for(self, users: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch dict (see the module docstring) of the given users, in the given order."""
        users = np.asarray(users, dtype=np.int64)
        ex_rows, ex_pos = _gather(self._ex_indptr, users)
        ho_rows, ho_pos = _gather(self._ho_indptr, users)
        return {
            "users": torch.from_numpy(users.copy()),
            "excl_row": torch.from_numpy(ex_rows),
            "excl_item": torch.from_numpy(self._ex_item[ex_pos]),
            "held_row": torch.from_numpy(ho_rows),
            "held_item": torch.from_numpy(self._ho_item[ho_pos]),
            "held_rating": torch.from_numpy(self._ho_rating[ho_pos]),
        }

    def batches(
        self,
        chunk_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        max_cells: int = MAX_SCORE_CELLS,
        device: torch.device | str | None = None,
    ) -> EvalChunks:
        """The evaluated users cut into chunks, as a map-style Dataset of batch dicts.

        ``chunk_size`` is the wanted users per chunk (``eval.user_chunk``); it is capped so that
        ``chunk * n_items <= max_cells``. Serve it with ``DataLoader(chunks, batch_size=None)``.

        Under DDP pass ``rank``/``world_size`` (and ``Trainer(use_distributed_sampler=False)`` for these
        loaders): rank ``r`` then gets chunks ``r, r + world_size, ...``, each user on exactly one rank.
        Lightning's default DistributedSampler would instead pad ranks with *repeated* chunks, counting
        some users twice; torchmetrics sums the per-rank states, so disjoint shards give exact metrics.
        Chunks are made small enough that every rank gets at least one (Lightning refuses an empty loader
        and a metric sync waits for every rank). ``device``: where the chunks are cut (see :class:`EvalChunks`).
        """
        chunk = effective_chunk_size(chunk_size, self.n_items, max_cells)
        if world_size > 1:
            chunk = max(1, min(chunk, -(-self.n_users_eval // world_size)))
        return EvalChunks(self, chunk, rank, world_size, device=device)


class EvalChunks(Dataset):
    """Map-style Dataset over the user chunks of an :class:`EvalData`; item ``i`` is chunk ``i``'s batch.

    The evaluated users' excluded and held-out pairs are laid out once, user after user in evaluation order
    (:func:`_gather` over all of them), so every chunk is a contiguous slice of each column: cutting one is a few
    tensor views and one subtraction (the rows, made chunk-relative), with no per-chunk gather. With ``device``
    the columns live there (``data.device_resident``): chunks are cut on the accelerator and Lightning has
    nothing to copy per chunk.
    """

    def __init__(
        self,
        data: EvalData,
        chunk_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.data = data
        self.chunk_size = int(chunk_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        n_chunks = -(-data.n_users_eval // self.chunk_size)
        # This rank's chunk numbers: a round-robin shard of all chunks.
        self._chunk_ids = np.arange(self.rank, n_chunks, self.world_size, dtype=np.int64)
        users = data.users
        ex_rows, ex_pos = _gather(data._ex_indptr, users)
        ho_rows, ho_pos = _gather(data._ho_indptr, users)
        columns = {"users": users, "excl_row": ex_rows, "excl_item": data._ex_item[ex_pos], "held_row": ho_rows,
                   "held_item": data._ho_item[ho_pos], "held_rating": data._ho_rating[ho_pos]}  # fmt: skip
        self._columns = {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in columns.items()}
        # Where each chunk's pairs start in the laid-out columns: the evaluated users' counts, summed.
        starts = np.arange(0, data.n_users_eval + self.chunk_size, self.chunk_size).clip(max=data.n_users_eval)
        self._ex_bounds = np.searchsorted(ex_rows, starts)
        self._ho_bounds = np.searchsorted(ho_rows, starts)

    def __len__(self) -> int:
        return int(self._chunk_ids.size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"chunk {index} out of range for {len(self)} chunks")
        chunk = int(self._chunk_ids[index])
        first, c = chunk * self.chunk_size, self._columns
        ex, ho = slice(*self._ex_bounds[chunk : chunk + 2]), slice(*self._ho_bounds[chunk : chunk + 2])
        return {
            "users": c["users"][first : first + self.chunk_size],
            "excl_row": c["excl_row"][ex] - first,
            "excl_item": c["excl_item"][ex],
            "held_row": c["held_row"][ho] - first,
            "held_item": c["held_item"][ho],
            "held_rating": c["held_rating"][ho],
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self)):
            yield self[i]
