"""The user x item matrix that the reference families (EASE, ItemKNN, iALS) are fitted on and score from.

Those families read a user as the set of items they liked: the rows of a sparse matrix ``X`` (users x items),
``x_ui`` = 1 (or the rating) where the user rated item ``i`` at or above ``positive_threshold`` in the ratings a
model may know (training, plus the ``known`` ratings of held-out users under ``split=users``). On the device the
matrix lives as CSR index tensors (:class:`SparseRows`); a chunk of users becomes a dense ``(B, n_items)`` block
for one matrix product, as the evaluator scores users in chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recarena.data.corpus import Corpus
from recarena.losses.base import Loss
from recarena.models.base import RecommenderModule
from recarena.schema import Schema


def segments(indptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR rows ``rows`` (B,) laid end to end: (positions into the CSR arrays (E,), owning row (E,), counts (B,))."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)  # (E,)
    first = torch.cumsum(counts, 0) - counts  # (B,) where each row starts in the output
    positions = torch.arange(len(owner), device=rows.device) + (starts - first)[owner]
    return positions, owner, counts


def model_input_rows(split: Any) -> np.ndarray:
    """Corpus rows a model may read a user from: training ratings, plus held-out users' ``known`` ones."""
    return np.concatenate([split.train, split.known])


def positives_matrix(corpus: Corpus, rows: np.ndarray, threshold: float | None) -> sp.csr_matrix:
    """``(n_users, n_items)`` CSR of the ratings among ``rows`` that are >= ``threshold`` (every one when None),
    holding the rating itself (binarise with :func:`binary`). Each (user, item) pair appears once (the corpus
    keeps one rating per pair)."""
    rows = np.asarray(rows)
    if threshold is not None:
        rows = rows[corpus.ratings[rows] >= threshold]
    shape = (corpus.n_users, corpus.n_items)
    ratings = corpus.ratings[rows].astype(np.float32)
    return sp.csr_matrix((ratings, (corpus.users[rows], corpus.items[rows])), shape=shape)


def binary(x: sp.csr_matrix) -> sp.csr_matrix:
    """The same pattern with every stored value 1."""
    out = x.copy()
    out.data = np.ones_like(out.data, dtype=np.float32)
    return out


class SparseRows(nn.Module):
    """A CSR matrix as non-persistent buffers: it follows the module's device, and checkpoints do not carry it
    (``attach`` rebuilds it from the data, in training and in ``load_run`` alike).

    ``dense(rows)`` gives the ``(B, n_cols)`` dense block of those rows; ``n_cols`` is fixed at construction.
    """

    def __init__(self, n_rows: int, n_cols: int) -> None:
        super().__init__()
        self.n_cols = int(n_cols)
        self.register_buffer("indptr", torch.zeros(n_rows + 1, dtype=torch.long), persistent=False)
        self.register_buffer("index", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("values", torch.zeros(0), persistent=False)

    def set(self, x: sp.csr_matrix, device: torch.device | str | None = None) -> SparseRows:
        """Hold ``x`` (its shape must match), on ``device`` (default: where the buffers are)."""
        if x.shape != (len(self.indptr) - 1, self.n_cols):
            raise ValueError(
                f"matrix of shape {x.shape} for a SparseRows of {(len(self.indptr) - 1, self.n_cols)}"
            )
        device = device or self.indptr.device
        x = x.tocsr()
        x.sort_indices()
        self.indptr = torch.from_numpy(x.indptr.astype(np.int64)).to(device)
        self.index = torch.from_numpy(x.indices.astype(np.int64)).to(device)
        self.values = torch.from_numpy(x.data.astype(np.float32)).to(device)
        return self

    @property
    def counts(self) -> torch.Tensor:
        """``(n_rows,)`` stored entries per row."""
        return self.indptr[1:] - self.indptr[:-1]

    def owners(self) -> torch.Tensor:
        """``(nnz,)`` the row of each stored entry."""
        return torch.repeat_interleave(torch.arange(len(self.counts), device=self.indptr.device), self.counts)

    def dense(self, rows: torch.Tensor) -> torch.Tensor:
        """``(B, n_cols)`` float32 block of ``rows`` (B,): zeros where nothing is stored."""
        positions, owner, _ = segments(self.indptr, rows.to(self.indptr.device))
        out = torch.zeros(len(rows), self.n_cols, device=self.indptr.device)
        out[owner, self.index[positions]] = self.values[positions]
        return out

    def to_torch_sparse(self) -> torch.Tensor:
        """The matrix as a coalesced torch sparse COO tensor (for ``torch.sparse.mm``)."""
        shape = (len(self.indptr) - 1, self.n_cols)
        index = torch.stack([self.owners(), self.index])  # CSR order is row-major: already coalesced
        return torch.sparse_coo_tensor(
            index, self.values, size=shape, is_coalesced=True, check_invariants=False
        )


def fit_device(module: nn.Module) -> torch.device:
    """Where a family fitted in ``setup`` should compute: the trainer's device (Lightning calls ``setup`` before it
    moves the module there), else the module's own device (``load_run``, a bare loop)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is not None:
        return trainer.strategy.root_device
    return next(iter(module.buffers()), torch.zeros(0)).device


class LikedItemsModel(RecommenderModule):
    """A family fitted, not trained, on the binary matrix ``X`` of each user's liked items, scoring a user from their
    row of ``X`` (EASE, ItemKNN). Fitted in ``setup`` (no epochs); a user is their liked items, so held-out users
    of ``split=users`` are scored too, and under ``eval.test_known=train+val`` it refits on every rating the test
    may know (as cheap as the first fit). Subclasses implement :meth:`fit_items` and call
    ``save_hyperparameters`` themselves (Lightning reads the subclass's arguments)."""

    provides = frozenset({"no_training", "similar_items"})  # similar_items: the family's own item-item weights
    needs_user_ids = False
    test_inputs = "read"

    def __init__(
        self, schema: Schema | dict[str, Any], loss: Loss, positive_threshold: float | None = 4.0, **kwargs: Any
    ) -> None:
        super().__init__(schema, loss, **kwargs)
        self.positive_threshold = positive_threshold
        self.history = SparseRows(self.schema.n_users, self.schema.n_items)  # X, the users' liked items

    def attach(self, dm: Any) -> None:
        super().attach(dm)
        self.fit(dm.corpus, model_input_rows(dm.split), fit_device(self))

    def read_inputs(self, corpus: Corpus, split: Any, rows: np.ndarray) -> None:
        self.fit(corpus, rows, self.history.indptr.device)

    def fit(self, corpus: Corpus, rows: np.ndarray, device: torch.device | str) -> None:
        """Fit on the liked ratings among the corpus ``rows``."""
        x = binary(positives_matrix(corpus, rows, self.positive_threshold))
        self.history.set(x, device)
        self.fit_items(x, device)

    def fit_items(self, x: sp.csr_matrix, device: torch.device | str) -> None:
        """The item-side model from the binary users x items matrix ``x``."""
        raise NotImplementedError
