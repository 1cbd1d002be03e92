"""The loss contract: a small module that turns a family's outputs on a training batch into a scalar.

A loss declares the capabilities it needs (``needs``) and a family the ones it has (``provides``), so an
incompatible pair (``model=popularity loss=mse``) is refused at start-up with the list of losses that fit,
before any data is read (see :mod:`recarena.checks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from recarena.evaluation.ranking import matmul_into

if TYPE_CHECKING:
    from recarena.models.base import RecommenderModule


class Loss(nn.Module):
    """Base class. Subclasses set ``needs`` and ``view`` and implement ``forward``."""

    #: Capabilities the family must provide (see ``RecommenderModule.provides``).
    needs: ClassVar[frozenset[str]] = frozenset()
    #: Training view the datamodule serves for this loss (see ``recarena.data.views.VIEWS``).
    view: ClassVar[str] = "pairs"
    #: How ``compare`` scores a user vector against an item vector: "dot" or "cosine" (``recarena export`` says it).
    similarity: str = "dot"
    #: Whether the family is trained by an optimiser on this loss's gradients (not fitted in closed form or by
    #: exact sweeps): what the throughput benchmark's bare loop can step.
    trains_by_gradient: ClassVar[bool] = True

    def __init__(self, monitor: str = "val/ndcg@10", positive_threshold: float | None = None) -> None:
        super().__init__()
        # The validation metric this objective is judged by (early stopping, best checkpoint; its direction is the
        # metric registry's, recarena.evaluation.registry).
        self.monitor = monitor
        # Ranking losses train on positives only: training ratings >= this (None = every rating).
        self.positive_threshold = positive_threshold

    def setup(self, datamodule: Any) -> None:
        """Read what the loss needs from the training data (e.g. item frequencies for LogQ). Default: nothing."""

    def compare(self, users: torch.Tensor, items: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D), (N, D) -> (B, N)``: how this objective compares user and item vectors (into ``out`` when
        given: :func:`~recarena.evaluation.ranking.matmul_into`).

        Embedding families rank the catalogue with it, so evaluation ranks by the similarity training optimised
        (a model trained on cosine similarities is ranked by cosine, not by raw dot products that favour long
        item vectors): ``similarity`` says which.
        """
        if self.similarity == "cosine":
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        return matmul_into(users, items.T, out)

    def forward(self, model: RecommenderModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class NoLoss(Loss):
    """``loss=none``: the family is fitted, not trained (popularity counts, EASE's closed form, ItemKNN's
    similarities): ``setup`` fits it and there are no epochs."""

    needs = frozenset({"no_training"})
    trains_by_gradient = False

    def forward(self, model: RecommenderModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise RuntimeError("loss=none trains nothing; it only fits families that need no training")


class AlternatingLoss(Loss):
    """``loss=als``: the family minimises its own objective exactly, one alternating sweep per epoch (iALS), with
    no optimiser; the "loss" of an epoch is the family's objective after its sweep. Trains on the ``sweep`` view
    (one example per epoch)."""

    needs = frozenset({"alternating"})
    view = "sweep"
    trains_by_gradient = False

    def forward(self, model: RecommenderModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.sweep()


class SeenPositives(nn.Module):
    """The (user, item) training positives as sorted keys ``user * n_items + item``: a membership test by
    binary search, vectorised and on the loss's device, without a users x items matrix.

    BPR uses it to redraw negatives that are the user's positives (``exclude_seen``), the in-batch softmax to
    mask other rows' positives that this user also liked (``mask_seen``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.n_items = 0
        self.register_buffer("keys", torch.zeros(0, dtype=torch.long), persistent=False)

    def build(self, datamodule: Any) -> None:
        tensors = datamodule.train_tensors
        self.n_items = int(datamodule.schema.n_items)
        keys = tensors["users"].long() * self.n_items + tensors["items"].long()  # (N,)
        self.keys = torch.sort(keys).values.to(self.keys.device)

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """True where ``items`` is a training positive of ``users`` (any broadcastable shapes)."""
        keys = users * self.n_items + items
        if not len(self.keys):
            return torch.zeros_like(keys, dtype=torch.bool)
        found = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[found] == keys
