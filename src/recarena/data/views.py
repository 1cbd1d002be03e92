"""Training views: batches cut from pre-loaded tensors, with no per-sample Python.

A view is an iterable of dicts of tensors. Each epoch permutes the rows once (one gather per column) and then
yields contiguous slices, which are views into the permuted tensors: a step costs two tensor slices, not
``batch_size`` calls to ``__getitem__`` plus a collate. We do not use ``DataLoader(sampler=BatchSampler(...))``
because ``BatchSampler`` builds a Python list of ints per batch, which alone costs more than an MF step at
batch 8192 on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from hydra.utils import get_method

from recarena.errors import ConfigError

if TYPE_CHECKING:
    from recarena.data.datamodule import MovieLensDataModule

#: Training views by name (``Loss.view``): a builder ``(datamodule) -> {column: tensor}`` over the training part of
#: the split. Every view has a ``rows`` column (the corpus row of each example) so a family can look up any
#: per-example context (a user's history before that rating, say) from its own precomputed tables. Builders are
#: named by import path and imported on first use: a view's module (and its dependencies) loads only when asked.
VIEWS: dict[str, str] = {
    "pairs": "recarena.data.views.pairs_view",
    "positives": "recarena.data.views.positives_view",
    "triplets": "recarena.data.triplets.triplets_view",
    "sweep": "recarena.data.views.sweep_view",
}


def view_builder(name: str) -> Callable[[MovieLensDataModule], dict[str, torch.Tensor]]:
    if name not in VIEWS:
        raise ValueError(f"unknown training view {name!r}; known: {', '.join(VIEWS)}")
    return get_method(VIEWS[name])


def _rows_view(dm: MovieLensDataModule, rows: np.ndarray) -> dict[str, torch.Tensor]:
    corpus = dm.corpus
    return {
        "users": torch.from_numpy(corpus.users[rows].astype(np.int64)),
        "items": torch.from_numpy(corpus.items[rows].astype(np.int64)),
        "ratings": torch.from_numpy(corpus.ratings[rows].astype(np.float32)),
        "rows": torch.from_numpy(rows.astype(np.int64)),
    }


def pairs_view(dm: MovieLensDataModule) -> dict[str, torch.Tensor]:
    """Every training rating: (user, item, rating) rows, for rating regression."""
    return _rows_view(dm, dm.split.train)


def positives_view(dm: MovieLensDataModule) -> dict[str, torch.Tensor]:
    """Training ratings >= the loss's positive threshold (all of them when it is None), for ranking losses."""
    rows = dm.split.train
    if dm.positive_threshold is not None:
        rows = rows[dm.corpus.ratings[rows] >= dm.positive_threshold]
    if not len(rows):
        raise ValueError(
            f"no training rating reaches loss.positive_threshold={dm.positive_threshold}: lower it (or null)"
        )
    return _rows_view(dm, rows)


def sweep_view(dm: MovieLensDataModule) -> dict[str, torch.Tensor]:
    """One example per epoch: a family that solves its objective exactly over the whole training matrix (iALS,
    ``loss=als``) takes one sweep per example, so an epoch is one sweep, validated like any other epoch."""
    return {"rows": torch.zeros(1, dtype=torch.long)}


class ShuffledBatches:
    """Yields lists of ``group`` mini-batches ``{name: tensor[perm[i:i+B]]}``, a fresh permutation each epoch.

    Args:
        tensors: columns of equal length, e.g. ``users``, ``items``, ``ratings``.
        batch_size: rows per batch; the last, shorter batch is kept (every rating is seen each epoch).
        seed: base seed; epoch e uses ``seed + e`` so runs are reproducible and resumable.
        rank, world_size: under DDP each process takes every ``world_size``-th row of the permutation, and all
            take the same number of batches (Lightning needs equal counts to keep processes in step).
        group: mini-batches handed over per Lightning step, as a list (see ``RecommenderModule.training_step``).
            Lightning's loop costs ~0.2 ms per step on CPU, as much as a whole MF step at batch 1024; taking
            several optimiser steps per Lightning step amortises it. Under DDP it must be 1 (one backward per
            forward of the DDP wrapper).
        device: where the columns live (:func:`residency` decides): each epoch's permuted copy is made there
            (the permutation is drawn on the CPU, so every device shuffles alike) and every batch is a view of it
            -- no per-step host-to-device copy. None: where the tensors are.
        pinned: keep the epoch's permuted copy in page-locked host memory instead (the fallback when the view
            does not fit the device): Lightning's transfer of a batch is then a non-blocking copy.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        group: int = 1,
        device: torch.device | str | None = None,
        pinned: bool = False,
    ) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns of a view must have equal lengths, got {lengths}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tensors = tensors
        self.n_rows = lengths.pop()
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.group = max(1, int(group))
        self.epoch = 0
        self.pinned = pinned
        if device is not None and not pinned:
            self.tensors = {name: t.to(device) for name, t in tensors.items()}  # once, not per step
        self._buffers: dict[str, torch.Tensor] = {}  # pinned: the epoch's permuted copy, reused

    @property
    def sampler(self) -> ShuffledBatches:
        """Itself: at the start of every training epoch Lightning calls ``dataloader.sampler.set_epoch(epoch)``
        with its own epoch counter, which a resumed run restores from the checkpoint, so epoch e is shuffled by
        ``seed + e`` whether the run got there straight or through a resume."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permuted(self, order: torch.Tensor) -> dict[str, torch.Tensor]:
        """The epoch's permuted copy of every column (one gather per column per epoch), where the batches will be
        cut from: on the columns' device, or in the reused pinned buffers."""
        out, moved = {}, {}
        for name, column in self.tensors.items():
            if self.pinned:
                size = (len(order), *column.shape[1:])
                if name not in self._buffers or self._buffers[name].shape != size:
                    self._buffers[name] = torch.empty(size, dtype=column.dtype).pin_memory()
                out[name] = torch.index_select(column, 0, order, out=self._buffers[name])
            else:
                if column.device not in moved:  # the permutation crosses to the device once per epoch
                    moved[column.device] = order.to(column.device)
                out[name] = column.index_select(0, moved[column.device])
        return out

    @property
    def minibatches_per_epoch(self) -> int:
        """Optimiser steps per epoch (what an LR schedule counts)."""
        rows_per_rank = self.n_rows // self.world_size
        return max(1, -(-rows_per_rank // self.batch_size))

    def __len__(self) -> int:
        return -(-self.minibatches_per_epoch // self.group)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n_rows, generator=generator)
        else:
            order = torch.arange(self.n_rows)
        rows_per_rank = self.n_rows // self.world_size
        if self.world_size > 1:
            order = order[self.rank :: self.world_size][:rows_per_rank]
        columns = self.permuted(order)
        self.epoch += 1
        starts = range(0, len(order), self.batch_size)
        for first in range(0, len(starts), self.group):
            yield [
                {name: col[start : start + self.batch_size] for name, col in columns.items()}
                for start in starts[first : first + self.group]
            ]


#: Where a training view lives (``data.device_resident``): on the accelerator, in pinned host memory, or as is.
RESIDENCIES = ("device", "pinned", "host")


def residency(option: str | bool, device: torch.device, view_bytes: int, free_bytes: int | None) -> str:
    """Where the training view goes, one of :data:`RESIDENCIES`, for ``data.device_resident`` = ``option``.

    On a CPU the view is where the model is already ("host"). On an accelerator: ``true`` puts it on the device,
    ``false`` keeps it in pinned host memory, ``auto`` puts it on the device when it takes at most half of the
    device's free memory (``free_bytes``; the rest is for the model, its optimiser state and the evaluation
    chunks) and otherwise falls back to pinned memory. A 25M-rating pairs view is ~0.7 GB.

    Raises:
        ConfigError: ``true`` (no fallback) and the view is larger than the device's free memory.
    """
    if device.type == "cpu":
        return "host"
    if option is True or option == "true":
        if free_bytes is not None and view_bytes > free_bytes:
            raise ConfigError(f"data.device_resident=true: the training view ({view_bytes / 1e9:.2f} GB) does not fit "
                              f"in {device}'s free memory ({free_bytes / 1e9:.2f} GB); use data.device_resident=auto "
                              "(pinned host memory when it does not fit) or false, or a smaller data.curation.")  # fmt: skip
        return "device"
    if option is False or option == "false":
        return "pinned"
    if free_bytes is not None and view_bytes > free_bytes // 2:
        return "pinned"
    return "device"
