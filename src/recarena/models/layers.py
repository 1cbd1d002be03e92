"""Small pieces the id-based families share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def rating_range(y_range: Sequence[float] | None, low: float, high: float) -> tuple[float, float]:
    """The sigmoid's output range: ``y_range`` when given, else from the data's rating scale ``[low, high]``:
    ``(low - 1, high + 0.5)``, fastai's (0, 5.5) on 1-5 stars and (0, 10.5) on a 1-10 scale, so a family's
    default never caps the predictions of another scale."""
    if y_range is None:
        return float(low) - 1.0, float(high) + 0.5
    return float(y_range[0]), float(y_range[1])


class SigmoidRange(nn.Module):
    """``lo + (hi - lo) * sigmoid(x)``: squashes a logit into the rating range (fastai's ``sigmoid_range``).

    A range a little wider than the rating scale (0, 5.5 for 1-5 stars) keeps the extreme ratings reachable
    without saturating the sigmoid; predictions are clipped to the scale for RMSE/MAE.
    """

    def __init__(self, y_range: Sequence[float]) -> None:
        super().__init__()
        self.low, self.high = float(y_range[0]), float(y_range[1])

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(logits)


def touched_rows_l2(*rows: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the summed squared norms of the looked-up rows: sum_t |table_t[idx_t[r]]|^2, each
    argument the ``(B, d_t)`` rows of one table (those the prediction already gathered).

    The per-rating penalty of SGD matrix factorisation (Koren et al. 2009): a row is shrunk each time a batch
    touches it, i.e. in proportion to how often it is seen, unlike weight decay, which shrinks every row on
    every step and over-regularises rare items.
    """
    total = sum(row.pow(2).sum(-1) for row in rows)
    return total.mean()
