"""MLP collaborative filtering: concatenated user and item embeddings through a small feed-forward network.

This is fastai's ``CollabNN`` (Howard & Gugger, *Deep Learning for Coders*, ch. 8) and the MLP branch
of Neural Collaborative Filtering (He et al., WWW 2017):

    h_0 = [p_u ; q_i]                      (d_u + d_i,)
    h_l = ReLU(W_l h_{l-1} + b_l)          for each hidden width in ``hidden`` (dropout after each)
    r̂(u, i) = lo + (hi - lo) · σ(w · h_L + c)

Unlike MF, the score is not a dot product of a user vector and an item vector, so the family provides
"ratings" and "scores" but not "embeddings": losses that score in-batch pairs by dot products do not apply.

Full-catalogue ranking stays cheap because the first layer is linear in the concatenation:
W [p_u ; q_i] + b = W_u p_u + W_i q_i + b. ``score_all`` computes W_u p_u + b once per user and W_i q_i once
per item and broadcast-adds them, so only the layers after the first run on the (users x items) grid.

Embedding sizes default to fastai's rule min(600, round(1.6 · n^0.56)); ``l2`` shrinks the embedding rows a
batch touches, as in :mod:`recarena.models.mf`; ``optimizer=sparse_adam`` gives the tables sparse gradients.

Run: ``python train.py model=mlp`` (``loss=mse``; ``loss=bpr`` for ranking), or the ML-100K quality check
``python train.py -m experiment=mlp_quality``.
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

#: Upper bound on one (users x items x width) activation block in ``score_all``, in bytes.
SCORE_BLOCK_BYTES = 256 * 2**20


def embedding_size(n_categories: int) -> int:
    """fastai's embedding-size rule of thumb: grows sub-linearly with the number of ids, capped at 600."""
    return int(min(600, round(1.6 * n_categories**0.56)))


class CollabMLP(RecommenderModule):
    """Embeddings -> MLP -> sigmoid range.

    Args:
        user_dim, item_dim: embedding sizes; None = :func:`embedding_size` of the number of users / items.
        hidden: widths of the hidden layers (ReLU after each); empty = a linear model on the embeddings.
        dropout: dropout probability after each hidden layer's ReLU.
        y_range: (lo, hi) of the sigmoid range of predicted ratings; None: from the data's rating scale.
        l2: λ of the penalty on the embedding rows a batch touches (0 = none).
        init_std: std of the normal initialisation of the embeddings (the linear layers keep torch's default).
        **kwargs: see :class:`RecommenderModule`.
    """

    provides = frozenset({"ratings", "scores", "item_vectors", "similar_items"})

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        user_dim: int | None = None,
        item_dim: int | None = None,
        hidden: Sequence[int] = (100,),
        dropout: float = 0.0,
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
        self.user_dim = int(user_dim) if user_dim is not None else embedding_size(n_users)
        self.item_dim = int(item_dim) if item_dim is not None else embedding_size(n_items)
        self.user_factors = nn.Embedding(n_users, self.user_dim, sparse=sparse)
        self.item_factors = nn.Embedding(n_items, self.item_dim, sparse=sparse)
        for table in (self.user_factors, self.item_factors):
            nn.init.normal_(table.weight, std=init_std)
        widths = [self.user_dim + self.item_dim, *(int(h) for h in hidden), 1]
        # The first layer is kept apart so score_all can split it into user and item parts.
        self.first = nn.Linear(widths[0], widths[1])
        rest: list[nn.Module] = []
        for width_in, width_out in zip(widths[1:-1], widths[2:], strict=True):
            rest += [nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(width_in, width_out)]
        self.rest = nn.Sequential(*rest)
        self.max_width = max(widths[1:])
        self.squash = SigmoidRange(rating_range(y_range, self.schema.rating_low, self.schema.rating_high))
        self.l2 = l2

    def _logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.user_factors(users), self.item_factors(items)], dim=-1)  # (N, d_u + d_i)
        return self.rest(self.first(x)).squeeze(-1)  # (N, H_1) -> (N, 1) -> (N,)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings of (user, item) pairs, inside ``y_range``. (N,), (N,) -> (N,)."""
        return self.squash(self._logits(users, items))

    def score(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid output for each row's user and ``items[r]``, ``(B,)`` (what ranking losses compare)."""
        return self._logits(batch["users"], items)

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-sigmoid scores of every item for each user, (B,) -> (B, n_items), by the split first layer.

        The sigmoid is monotone, so these rank exactly as the predicted ratings do, without the ties a
        saturated float32 sigmoid would create at the top of the list.
        """
        weight, bias = self.first.weight, self.first.bias  # (H_1, d_u + d_i), (H_1,)
        user_part = self.user_factors(users) @ weight[:, : self.user_dim].T + bias  # (B, H_1)
        item_part = self.item_factors.weight @ weight[:, self.user_dim :].T  # (n_items, H_1)
        n_users, n_items = user_part.shape[0], item_part.shape[0]
        # Items per block so that one (B, chunk, width) float32 activation stays under SCORE_BLOCK_BYTES.
        chunk = max(1, SCORE_BLOCK_BYTES // (4 * max(n_users, 1) * self.max_width))
        scores = user_part.new_empty(n_users, n_items) if out is None else out  # (B, n_items)
        for start in range(0, n_items, chunk):
            block = user_part[:, None, :] + item_part[None, start : start + chunk, :]  # (B, C, H_1)
            scores[:, start : start + chunk] = self.rest(block).squeeze(-1)  # (B, C, 1) -> (B, C)
        return scores

    def item_similarity_vectors(self) -> torch.Tensor:
        """The item embedding table, the input the MLP reads an item from (fastai's entity embeddings)."""
        return self.item_factors.weight

    def penalty(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """λ · mean over the batch of |p_u|² + |q_i|² (only the rows the batch touches). Looked up apart from the
        prediction's rows (the default ``rating_and_penalty``): MF's one-lookup fusion would re-round the MLP's
        embedding gradients, and so its trained metrics in their last digits, for a step the network dominates."""
        if not self.l2:
            return torch.zeros((), device=self.device)
        return self.l2 * touched_rows_l2(self.user_factors(batch["users"]), self.item_factors(batch["items"]))
