"""Item-based k-nearest neighbours (Sarwar et al. 2001, "Item-based collaborative filtering recommendation
algorithms"; Deshpande & Karypis 2004, "Item-based top-N recommendation algorithms"), with the shrunk and
asymmetric cosine of Aiolli 2013 ("Efficient top-N recommendation for very large scale binary rated datasets").

On the binary users x items matrix ``X`` of liked training items (:mod:`recarena.models.interactions`), with
``c_ij`` the number of users who liked both ``i`` and ``j`` and ``n_i`` the users who liked ``i``, the weight of
neighbour ``j`` for target item ``i`` is

    s(i <- j) = c_ij / (n_i^(1-α) · n_j^α + h)

α = 0.5 is the cosine; α > 0.5 penalises popular neighbours more; the shrinkage ``h`` damps similarities
resting on few co-likes. Each target keeps its ``k`` strongest neighbours (a sparse ``S``: ``n_items x k``
entries), and a user's score for item ``i`` is the sum of the weights of the liked items among its neighbours:

    score(u, i) = Σ_j x_uj s(i <- j) = (X Sᵀ)_ui

The similarities are computed in chunks of target items, each one sparse product ``X[:, chunk]ᵀ X`` and one
vectorised top-k (a sort within rows); scoring is a sparse-dense product on the run's device. Users are read
from their liked items, so ``split=users`` works.

Run: ``python train.py model=itemknn`` (``loss=none``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recarena.errors import ConfigError
from recarena.losses.base import Loss
from recarena.models.interactions import LikedItemsModel, SparseRows
from recarena.schema import Schema

#: Co-count cells computed at once (a chunk of target items x the catalogue): bounds the fit's memory.
MAX_CHUNK_CELLS = 2**24


def top_k_per_row(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Mask of the entries that are among the ``k`` largest ``values`` of their row (ties: lower column first)."""
    order = np.lexsort((cols, -values, rows))  # by row, then value descending, then column
    sorted_rows = rows[order]
    first = np.searchsorted(sorted_rows, sorted_rows, side="left")  # where each entry's row starts
    keep = np.zeros(len(rows), dtype=bool)
    keep[order] = (np.arange(len(rows)) - first) < k
    return keep


def neighbour_weights(x: sp.csr_matrix, k: int, shrink: float = 0.0, alpha: float = 0.5) -> sp.csr_matrix:
    """``(n_items, n_items)`` CSR ``S`` with ``S[i, j] = s(i <- j)`` for the ``k`` strongest neighbours ``j`` of
    each target ``i`` (no self-similarity, no zero weights); ``x`` is binary users x items."""
    n_items = x.shape[1]
    liked_by = x.T.tocsr()  # (n_items, n_users)
    counts = np.asarray(liked_by.getnnz(axis=1), dtype=np.float64)  # n_i
    step = max(1, MAX_CHUNK_CELLS // max(n_items, 1))
    parts = []
    for start in range(0, n_items, step):
        co = (liked_by[start : start + step] @ x).tocoo()  # (chunk, n_items) co-counts c_ij
        rows, cols, co_counts = (
            co.row.astype(np.int64) + start,
            co.col.astype(np.int64),
            co.data.astype(np.float64),
        )
        weights = co_counts / (counts[rows] ** (1.0 - alpha) * counts[cols] ** alpha + shrink)
        keep = (rows != cols) & (weights > 0)
        rows, cols, weights = rows[keep], cols[keep], weights[keep]
        keep = top_k_per_row(rows, cols, weights, k)
        parts.append((rows[keep], cols[keep], weights[keep]))
    rows, cols, weights = (np.concatenate(p) for p in zip(*parts, strict=True)) if parts else ([], [], [])
    return sp.csr_matrix((np.asarray(weights, np.float32), (rows, cols)), shape=(n_items, n_items))


class ItemKNN(LikedItemsModel):
    """Item-item neighbourhood model over the liked items of each user.

    Args:
        k: neighbours kept per target item.
        shrink: ``h``, added to the similarity's denominator (0 = none).
        alpha: asymmetry of the cosine (0.5 = the cosine itself), in [0, 1].
        positive_threshold: a rating >= this is a liked item (None = every rated item).
        **kwargs: see :class:`RecommenderModule`.
    """

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        k: int = 100,
        shrink: float = 0.0,
        alpha: float = 0.5,
        positive_threshold: float | None = 4.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, loss, positive_threshold, **kwargs)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        if int(k) < 1 or float(shrink) < 0 or not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(
                f"model=itemknn needs model.k >= 1, model.shrink >= 0 and 0 <= model.alpha <= 1; got k={k}, "
                f"shrink={shrink}, alpha={alpha}."
            )
        self.k, self.shrink, self.alpha = int(k), float(shrink), float(alpha)
        self.neighbours = SparseRows(self.schema.n_items, self.schema.n_items)  # S, row = target item

    def fit_items(self, x: sp.csr_matrix, device: torch.device | str) -> None:
        self.neighbours.set(neighbour_weights(x, self.k, self.shrink, self.alpha), device)

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        liked = self.history.dense(users)  # (B, n_items)
        scores = torch.sparse.mm(self.neighbours.to_torch_sparse(), liked.T).T  # (X Sᵀ)_u = (S X_uᵀ)ᵀ, (B, n_items)
        return scores if out is None else out.copy_(scores)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.history.dense(users) * self.neighbours.dense(items)).sum(-1)  # (N,)

    def similar_items(self, item: int) -> torch.Tensor:
        """``(n_items,)`` the item's neighbour weights ``s(item <- j)`` (zero outside its ``k`` neighbours)."""
        return self.neighbours.dense(torch.tensor([item], device=self.neighbours.indptr.device))[0]
