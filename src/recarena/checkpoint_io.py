"""Checkpoints written whole or not at all, wherever the run dir is.

Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temp dir; when
the run dir is on another filesystem, the final move is a copy, and a kill during it leaves half a checkpoint.
Here the checkpoint is written to a temporary file beside its target and renamed onto it
(:func:`recarena.atomic.atomic_file`): a kill mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from recarena.atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs keep Lightning's own path)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_file(path, "wb") as handle:
            torch.save(checkpoint, handle)
