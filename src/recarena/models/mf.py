"""Dot-product matrix factorisation with user and item biases (fastai's ``DotProductBias``; Howard & Gugger,
*Deep Learning for Coders*, ch. 8).

    r̂(u, i) = lo + (hi - lo) · σ(p_u · q_i + b_u + b_i)

The sigmoid range (lo, hi) = (0, 5.5) by default, slightly wider than the 1-5 scale so that the extreme ratings
are reachable without saturating the sigmoid; predictions are clipped to the rating scale for RMSE/MAE.

Regularisation: ``l2`` adds λ · mean over the batch of (|p_u|² + |q_i|² + b_u² + b_i²), i.e. the classic per-rating
penalty of SGD matrix factorisation (Koren et al. 2009) applied only to the rows the batch touches, so a movie is
shrunk in proportion to how often it is seen. Optimiser weight decay instead shrinks every row on every step,
which over-regularises rare items. With ``optimizer=sparse_adam`` the tables get sparse gradients and only the
touched rows are updated at all.

Run: ``python train.py model=mf`` (``loss=mse``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from recarena.losses.base import Loss
from recarena.models.base import RecommenderModule
from recarena.models.layers import SigmoidRange, rating_range, touched_rows_l2
from recarena.schema import Schema


class MatrixFactorization(RecommenderModule):
    """MF with biases and a sigmoid output range.

    Args:
        n_factors: embedding size (50 in fastai's ``DotProductBias``).
        y_range: (lo, hi) of the sigmoid range; None: from the data's rating scale.
        l2: λ of the penalty on the rows a batch touches (0 = none).
        init_std: std of the normal initialisation of the factors (biases start at 0).
        **kwargs: see :class:`RecommenderModule`.
    """

    provides = frozenset({"ratings", "scores", "embeddings", "item_vectors", "similar_items", "item_biases", "export"})

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        n_factors: int = 50,
        y_range: Sequence[float] | None = None,
        l2: float = 0.0,
        init_std: float = 0.01,
        optimizer: partial | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, loss, optimizer=optimizer, **kwargs)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        sparse = self.sparse_embeddings(optimizer)
        n_users, n_items = self.schema.n_users, self.schema.n_items
        self.user_factors = nn.Embedding(n_users, n_factors, sparse=sparse)
        self.item_factors = nn.Embedding(n_items, n_factors, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        for table in (self.user_factors, self.item_factors):
            nn.init.normal_(table.weight, std=init_std)
        for table in (self.user_bias, self.item_bias):
            nn.init.zeros_(table.weight)
        self.squash = SigmoidRange(rating_range(y_range, self.schema.rating_low, self.schema.rating_high))
        self.l2 = l2

    def _logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_factors(users) * self.item_factors(items)).sum(-1)  # (N,)
        return dot + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings: the sigmoid range applies to rating regression only."""
        return self.squash(self._logits(users, items))

    def score(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self._logits(batch["users"], items)

    # MF as a two-tower with id-only towers: bias-augmented vectors [p_u, b_u, 1] . [q_i, 1, b_i]
    # = p_u . q_i + b_u + b_i, so in-batch losses and ranking use exactly the model's own scores.
    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_embeddings(batch["users"])

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embeddings(items)

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Bias-augmented dot products before the sigmoid (the same ranking as the predicted ratings, as the
        sigmoid is monotone, without the float32 ties a saturated sigmoid makes), or their cosine when the loss
        trained on cosine similarities."""
        return self.loss_fn.compare(self.user_embeddings(users), self.item_embeddings(), out)

    def user_embeddings(self, users: torch.Tensor | None = None) -> torch.Tensor:
        """Bias-augmented user vectors ``[p_u, b_u, 1]``, ``(B, n_factors + 2)`` (all users when None)."""
        factors = self.user_factors.weight if users is None else self.user_factors(users)
        bias = self.user_bias.weight if users is None else self.user_bias(users)
        return torch.cat([factors, bias, torch.ones_like(bias)], dim=-1)

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Bias-augmented item vectors ``[q_i, 1, b_i]``, ``(N, n_factors + 2)`` (all items when None)."""
        factors = self.item_factors.weight if items is None else self.item_factors(items)
        bias = self.item_bias.weight if items is None else self.item_bias(items)
        return torch.cat([factors, torch.ones_like(bias), bias], dim=-1)

    def item_similarity_vectors(self) -> torch.Tensor:
        """The item factors ``q_i`` (fastai's movie similarity; Howard & Gugger, ch. 8), without the bias columns."""
        return self.item_factors.weight

    def item_biases(self) -> torch.Tensor:
        """``(n_items,)`` item biases ``b_i`` (in logit units): how much a movie is liked whoever rates it
        (``recarena explain``; as read in Howard & Gugger, ch. 8). A family with an item bias offers it by this
        method."""
        return self.item_bias.weight.squeeze(-1)

    def _rows(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The batch's rows of the four tables: p_u, q_i, b_u, b_i."""
        users, items = batch["users"], batch["items"]
        return self.user_factors(users), self.item_factors(items), self.user_bias(users), self.item_bias(items)

    def penalty(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.l2:
            return torch.zeros((), device=self.device)
        return self.l2 * touched_rows_l2(*self._rows(batch))

    def score_and_penalty(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's score for its own item (the logit p_u . q_i + b_u + b_i) and the touched-rows L2
        (:func:`touched_rows_l2`) from one lookup of each table: looking the rows up again for the penalty doubled
        the embedding lookups and their backward calls."""
        rows = self._rows(batch)
        p, q, b_u, b_i = rows
        logits = (p * q).sum(-1) + b_u.squeeze(-1) + b_i.squeeze(-1)
        if not self.l2:
            return logits, torch.zeros((), device=self.device)
        return logits, self.l2 * touched_rows_l2(*rows)

    def rating_and_penalty(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted ratings (the squashed logits) and the penalty, from one lookup (:meth:`score_and_penalty`)."""
        logits, penalty = self.score_and_penalty(batch)
        return self.squash(logits), penalty
