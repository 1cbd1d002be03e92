"""Triplet margin loss over item embeddings (Schroff et al. 2015, FaceNet), for Siamese item encoders.

    L = mean over triplets of max(0, |f(a) - f(p)|_2 - |f(a) - f(n)|_2 + margin)

with ``f`` the family's item encoder (``embed_items``), L2-normalised, so distances lie in [0, 2] and the margin
0.3 (that of a public Siamese-network notebook on MovieLens genome tags) is a fixed fraction of that range.
Batches come from the ``triplets`` view (:mod:`recarena.data.triplets`): columns ``anchors``, ``positives``,
``negatives`` (item indices).

Run: ``python train.py model=siamese`` (``loss=triplet`` is its default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recarena.losses.base import Loss

if TYPE_CHECKING:
    from recarena.models.base import RecommenderModule


class TripletLoss(Loss):
    """``torch.nn.TripletMarginLoss`` (Euclidean) on the family's item embeddings, plus its regulariser.

    Args:
        margin: how much farther the negative must be than the positive before a triplet stops counting.
        **kwargs: see :class:`~recarena.losses.base.Loss`.
    """

    needs = frozenset({"triplets"})
    view = "triplets"

    def __init__(self, margin: float = 0.3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.margin = margin
        self.criterion = nn.TripletMarginLoss(margin=margin, p=2.0)

    def forward(self, model: RecommenderModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        anchor = model.embed_items(batch["anchors"])  # (B, D)
        positive = model.embed_items(batch["positives"])  # (B, D)
        negative = model.embed_items(batch["negatives"])  # (B, D)
        return self.criterion(anchor, positive, negative) + model.penalty(batch)
