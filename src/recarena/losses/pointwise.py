"""Pointwise rating regression."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from recarena.losses.base import Loss

if TYPE_CHECKING:
    from recarena.models.base import RecommenderModule


class MSELoss(Loss):
    """Mean squared error between predicted and observed ratings, plus the family's regulariser.

    The regulariser (e.g. MF's L2 on the embedding rows the batch touches) is the family's business, so the
    same loss serves every rating-predicting family.
    """

    needs = frozenset({"ratings"})
    view = "pairs"

    def forward(self, model: RecommenderModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred, penalty = model.rating_and_penalty(batch)  # (B,), scalar
        return F.mse_loss(pred, batch["ratings"]) + penalty
