"""Optimisers beyond ``torch.optim``: Adam over a mix of sparse and dense gradients.

``optimizer=sparse_adam`` trains embedding tables with sparse gradients (only the rows a batch touches are read
and written, the "lazy Adam" of ``torch.optim.SparseAdam``) and every other parameter with ordinary Adam. Torch
has no single optimiser for the mix (``Adam`` refuses sparse gradients, ``SparseAdam`` refuses dense ones), and
Lightning's automatic optimisation wants one optimiser, so this class owns one of each and presents their
parameter groups as its own: LR schedulers and Lightning see a normal ``torch.optim.Optimizer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn


class SparseDenseAdam(torch.optim.Optimizer):
    """Adam for dense parameters + lazy (row-wise) Adam for sparse embedding tables.

    Args:
        params: parameters or named groups; a parameter counts as sparse when a module built it with
            ``sparse=True`` (the model reads :attr:`sparse_gradients` to build its embeddings that way) and is
            listed in ``sparse_params``. Families pass ``model.parameters()``; the split is done by
            :func:`split_sparse_dense` on the module.
        lr, betas, eps: as in Adam.
        weight_decay: decoupled decay of the dense parameters only (decay of every embedding row on every step
            is what sparse updates avoid; regularise embeddings with the family's ``l2`` instead).
    """

    #: Tells families to build their embedding tables with ``sparse=True``.
    sparse_gradients: ClassVar[bool] = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        sparse_params: Iterable[nn.Parameter] | None = None,
    ) -> None:
        params = list(params)
        sparse_ids = {id(p) for p in (sparse_params or [])}
        sparse = [p for p in params if id(p) in sparse_ids]
        dense = [p for p in params if id(p) not in sparse_ids]
        betas = tuple(betas)
        self._parts: list[torch.optim.Optimizer] = []
        if sparse:
            self._parts.append(torch.optim.SparseAdam(sparse, lr=lr, betas=betas, eps=eps))
        if dense:
            self._parts.append(torch.optim.AdamW(dense, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        if not self._parts:
            raise ValueError("SparseDenseAdam got no parameters")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__([{"params": []}], defaults)
        # Share the inner optimisers' group dicts, so a scheduler's write to param_groups[i]["lr"] reaches them.
        self.param_groups = [group for part in self._parts for group in part.param_groups]

    @property
    def state(self) -> dict:  # type: ignore[override]
        merged: dict = {}
        for part in getattr(self, "_parts", []):
            merged.update(part.state)
        return merged

    @state.setter
    def state(self, value: dict) -> None:  # Optimizer.__init__ assigns it; the parts own the real state.
        pass

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self._parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self._parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self._parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, part_state in zip(self._parts, state_dict["parts"], strict=True):
            part.load_state_dict(part_state)
        self.param_groups = [group for part in self._parts for group in part.param_groups]


def split_sparse_dense(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of ``module`` that receive sparse gradients (embeddings built with ``sparse=True``)."""
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse]


# Scheduler factories: each takes the optimiser and the run's total number of steps (which Lightning knows
# only once the trainer is attached), so `conf/scheduler/*.yaml` holds only the shape of the schedule.
def one_cycle(
    optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> torch.optim.lr_scheduler.LRScheduler:
    """fastai's one-cycle policy: warm up to the configured lr over ``pct_start``, then anneal (cosine)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(total_steps, 1),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )


def cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, eta_min: float = 0.0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay from the configured lr to ``eta_min`` over the whole run."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=eta_min)
