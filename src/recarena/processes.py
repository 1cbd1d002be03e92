"""What the processes of a DDP run share: rows gathered from every process, in rank order.

It imports nothing of recarena, so every layer may use it: the evaluator gathers per-user rows with it, the in-batch
losses their columns.
"""

from __future__ import annotations

import torch


def world_size() -> int:
    """Processes of the running DDP job; 1 without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def gather_rows(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's ``local`` rows, concatenated in rank order (their counts may differ), and where this
    process's own rows start in it; ``(local, 0)`` without DDP. The gather carries no gradient."""
    if world_size() == 1:
        return local, 0
    from torchmetrics.utilities.distributed import gather_all_tensors  # pads rows to the longest, then trims

    parts = gather_all_tensors(local)
    return torch.cat(parts), sum(len(p) for p in parts[: torch.distributed.get_rank()])
