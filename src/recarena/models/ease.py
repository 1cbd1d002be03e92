"""EASE: a closed-form item-item linear model (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data").

With ``X`` the binary users x items matrix of liked training items (:mod:`recarena.models.interactions`), EASE
learns the item-item weights ``B`` that reconstruct ``X`` from itself without the trivial identity:

    min_B ‖X - XB‖²_F + λ‖B‖²_F   subject to diag(B) = 0

whose solution (Steck 2019, eq. 8) is one matrix inverse:

    P = (XᵀX + λI)⁻¹,   B_ij = -P_ij / P_jj  (i ≠ j),   B_jj = 0

A user's scores are their row of ``XB``: the liked items vote for the items they co-occur with, net of the
other votes (the inverse makes it a multiple regression, not a sum of pairwise co-counts).

Fitted once, in ``setup`` (no epochs, no optimiser): the Gram matrix from the sparse ``X`` on the CPU (a sparse
product costs the sum over users of their squared counts), the inverse on the run's device. ``B`` is dense,
``n_items²`` floats (3.6 GB at 30,000 items), so catalogues above ``max_items`` are refused before the fit.
Users are read from their ratings, never from an id embedding, so ``split=users`` works.

Run: ``python train.py model=ease`` (``loss=none``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recarena.errors import ConfigError
from recarena.evaluation.ranking import matmul_into
from recarena.losses.base import Loss
from recarena.models.interactions import LikedItemsModel
from recarena.schema import Schema


def ease_weights(x: sp.csr_matrix, l2: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n_items, n_items)`` EASE weights ``B`` of the users x items matrix ``x`` (Steck 2019, eq. 8)."""
    gram = torch.from_numpy((x.T @ x).toarray().astype(np.float32)).to(device)  # XᵀX, (n_items, n_items)
    gram.diagonal().add_(float(l2))
    inverse = torch.cholesky_inverse(
        torch.linalg.cholesky(gram)
    )  # P: XᵀX + λI is symmetric positive definite
    weights = inverse / -inverse.diagonal()[None, :]  # B_ij = -P_ij / P_jj
    weights.fill_diagonal_(0.0)
    return weights


class EASE(LikedItemsModel):
    """EASE over the liked items of each user.

    Args:
        l2: λ, the L2 penalty on ``B`` (Steck 2019 tunes it on validation; hundreds to thousands on MovieLens).
        positive_threshold: a rating >= this is a liked item (None = every rated item).
        max_items: the largest catalogue accepted (``B`` is dense: ``n_items²`` floats).
        **kwargs: see :class:`RecommenderModule`.
    """

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        l2: float = 500.0,
        positive_threshold: float | None = 4.0,
        max_items: int = 30_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, loss, positive_threshold, **kwargs)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        n_items = self.schema.n_items
        if n_items > int(max_items):
            raise ConfigError(
                f"model=ease keeps a dense n_items x n_items matrix, and this catalogue has {n_items:,} items, above "
                f"model.max_items={int(max_items):,}: shrink it with data.curation.min_item_ratings=... (drops rarely "
                f"rated movies), or raise model.max_items if {n_items:,}² floats fit in memory."
            )
        if float(l2) <= 0:
            raise ConfigError(f"model.l2 must be positive for EASE (XᵀX alone is singular), got {l2}.")
        self.l2 = float(l2)
        self.register_buffer("weights", torch.zeros(n_items, n_items), persistent=False)

    def fit_items(self, x: sp.csr_matrix, device: torch.device | str) -> None:
        self.weights = ease_weights(x, self.l2, device)

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return matmul_into(self.history.dense(users), self.weights, out)  # (B, n_items) @ (n_items, n_items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.history.dense(users) * self.weights[:, items].T).sum(-1)  # (N,)

    def similar_items(self, item: int) -> torch.Tensor:
        """``(n_items,)`` column ``B[:, item]``: how much liking each movie raises this one's score."""
        return self.weights[:, item]
