"""Optimisers beyond ``torch.optim``: Adam over a mix of sparse and dense gradients.

``optimizer=sparse_adam`` trains embedding tables with sparse gradients (only the rows a batch touches are read
and written, the "lazy Adam" of ``torch.optim.SparseAdam``) and every other parameter with ordinary Adam. Torch
has no single optimiser for the mix (``Adam`` refuses sparse gradients, ``SparseAdam`` refuses dense ones), and
Lightning's automatic optimisation wants one optimiser, so this class owns one of each and presents their
parameter groups as its own: LR schedulers and Lightning see a normal ``torch.optim.Optimizer``.

The lazy Adam itself is :class:`RowwiseAdam` by default: SparseAdam's update, row for row, written as one pass
over the touched rows (``bench/optimizers.py`` measures the two side by side).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn


class RowwiseAdam(torch.optim.Optimizer):
    """Lazy Adam for embedding tables with sparse gradients: ``torch.optim.SparseAdam``'s update (Kingma & Ba
    2015, applied only to the rows a batch touches, with one step count per table for the bias correction),
    computed as a single pass over those rows.

    SparseAdam coalesces each gradient, then reads and writes both moments and the weights through sparse masks
    and sparse additions, a dozen passes over the touched rows. Here the touched rows and their summed gradient
    come from :func:`touched_rows`, the moments are gathered, updated in SparseAdam's order of operations and
    written back, and the weights move with one ``index_add_``: the same tables as SparseAdam's, bit for bit, on
    the CPU (tests/test_optim.py), and on a GPU by the same ``coalesce()`` and order of operations (what
    ``bench/optimizers.py --device cuda`` checks). The state has SparseAdam's layout, so a checkpoint of either
    loads into the other.

    Args:
        params: the tables (dense parameters that receive row-sparse gradients: ``nn.Embedding`` or
            ``nn.EmbeddingBag`` built with ``sparse=True``).
        lr, betas, eps, maximize: as in ``torch.optim.SparseAdam``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        if not lr > 0.0 or not eps > 0.0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"RowwiseAdam needs lr > 0, eps > 0 and 0 <= betas < 1; got {lr}, {eps}, {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "maximize": maximize})
        if any(p.is_sparse or p.is_complex() for group in self.param_groups for p in group["params"]):
            raise ValueError("RowwiseAdam updates dense real tables (their gradients are the sparse ones)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = closure_loss(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse or param.grad.sparse_dim() != 1:
                    raise RuntimeError("RowwiseAdam needs row-sparse gradients (nn.Embedding or nn.EmbeddingBag "
                                       "with sparse=True); use Adam for dense ones")  # fmt: skip
                state = self.state[param]
                if not state:  # SparseAdam's state layout
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                if param.grad._nnz():
                    rowwise_adam_update(param, param.grad, state, group)
        return loss


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """What ``step(closure)`` returns in torch.optim: the closure's loss, computed with gradients enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a row-sparse gradient touches (ascending) and each one's summed gradient, summed as SparseAdam's
    ``coalesce()`` sums them, so that the two optimisers agree to the last bit.

    On the CPU: one sort of the row indices, then ``index_add_`` in that sort's order, which is coalesce's own
    order at a fraction of its cost. Elsewhere ``coalesce()`` itself: a GPU's ``index_add_`` sums with atomics in
    no fixed order, and runs with the same seed would not repeat."""
    if grad.device.type != "cpu":
        coalesced = grad.coalesce()
        return coalesced._indices()[0], coalesced._values()
    index, order = grad._indices()[0].sort()
    rows, slot = torch.unique_consecutive(index, return_inverse=True)
    values = grad._values()
    return rows, values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, slot, values.index_select(0, order))


def rowwise_adam_update(param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One lazy Adam step of ``param`` on the rows its sparse ``grad`` touches, as SparseAdam computes it:
    m ← m + (1-β1)(g - m), v ← v + (1-β2)(g² - v), w ← w - lr·√(1-β2^t)/(1-β1^t) · m / (√v + ε)."""
    beta1, beta2 = group["betas"]
    rows, g = touched_rows(grad)
    if group.get("maximize", False):
        g = -g  # exact: negating before or after the sum gives the same floats
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    m_old, v_old = exp_avg.index_select(0, rows), exp_avg_sq.index_select(0, rows)
    m = g.sub(m_old).mul_(1 - beta1).add_(m_old)
    v = g.pow(2).sub_(v_old).mul_(1 - beta2).add_(v_old)
    exp_avg.index_copy_(0, rows, m)
    exp_avg_sq.index_copy_(0, rows, v)
    step = state["step"]
    step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    param.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])).mul_(-step_size))


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
        fused: the tables' lazy Adam is :class:`RowwiseAdam` (True, or None: the default) or
            ``torch.optim.SparseAdam`` (False); the same tables either way. The dense parameters' AdamW is
            torch's default implementation in both.
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
        fused: bool | None = True,
    ) -> None:
        params = list(params)
        sparse_ids = {id(p) for p in (sparse_params or [])}
        sparse = [p for p in params if id(p) in sparse_ids]
        dense = [p for p in params if id(p) not in sparse_ids]
        betas = tuple(betas)
        self._parts: list[torch.optim.Optimizer] = []
        if sparse:
            lazy_adam = torch.optim.SparseAdam if fused is False else RowwiseAdam
            self._parts.append(lazy_adam(sparse, lr=lr, betas=betas, eps=eps))
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
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = closure_loss(closure)
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
