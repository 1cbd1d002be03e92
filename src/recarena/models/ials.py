"""iALS: implicit alternating least squares, with the objective of Rendle et al. 2021 ("Revisiting the
performance of iALS on item recommendation benchmarks") and, as an option, the confidence weights of Hu, Koren &
Volinsky 2008 ("Collaborative filtering for implicit feedback datasets").

With ``S`` the liked (user, item) pairs (training ratings >= ``positive_threshold``), user vectors ``w_u`` and
item vectors ``h_i`` (``dim`` each) and ŷ_ui = w_u · h_i, Rendle et al. minimise (their eq. 3)

    L = Σ_(u,i)∈S c_ui (ŷ_ui - 1)²  +  α0 Σ_u Σ_i ŷ_ui²  (HKV: the second sum over unobserved pairs only)
        + λ ( Σ_u (|I_u| + α0 |I|)^ν ‖w_u‖²  +  Σ_i (|U_i| + α0 |U|)^ν ‖h_i‖² )

``c_ui = 1`` (``confidence: binary``, Rendle et al.) or ``1 + α·r_ui`` (``confidence: rating``, Hu et al.). α0
weighs every unobserved pair at once; ν scales the L2 penalty with how much data each row sees (ν = 0: a plain
λ). With the items fixed, each user's loss is quadratic in ``w_u`` and its minimiser solves the ``dim x dim``
system

    (α0 HᵀH + Σ_(i∈I_u) a_ui h_i h_iᵀ + λ_u I) w_u = Σ_(i∈I_u) c_ui h_i,   a_ui = c_ui (binary) or c_ui - α0 (rating)

and symmetrically for the items. One *sweep* solves all users exactly, then all items: a block-coordinate descent
whose objective never increases. The systems are built and solved in batches (rows of similar length padded
together, one ``bmm`` and one batched Cholesky solve per batch, on the run's device); no Python loop
over users or items. Lightning runs one sweep per epoch, validating after each, with early stopping and
checkpoints as for every family (``loss=als``: the family solves its own objective, no optimiser).

Users are learnt vectors, so ``split=users`` is refused (no fold-in of held-out users is implemented).

Run: ``python train.py model=ials`` (``loss=als``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recarena.errors import ConfigError
from recarena.evaluation.ranking import matmul_into
from recarena.losses.base import Loss
from recarena.models.base import RecommenderModule
from recarena.models.interactions import SparseRows, fit_device, positives_matrix
from recarena.schema import Schema

#: Floats one batch of systems may hold (padded neighbours x dim, and the dim x dim matrices): 128 MiB.
MAX_BATCH_FLOATS = 2**25
CONFIDENCES = ("binary", "rating")


def row_batches(
    counts: np.ndarray, dim: int, max_floats: int = MAX_BATCH_FLOATS, growth: float = 1.25
) -> list[np.ndarray]:
    """Rows grouped for batched solves: rows whose numbers of entries differ by less than a factor ``growth`` share
    a bucket (so padding to a batch's longest row wastes under 25%), and each bucket is cut into batches whose
    padded neighbour block (rows x longest row x dim) and systems (rows x dim²) fit in ``max_floats``."""
    order = np.argsort(counts, kind="stable")
    lengths = np.maximum(counts[order], 1)
    bucket = np.floor(np.log(lengths) / np.log(growth)).astype(np.int64)
    edges = np.flatnonzero(np.diff(bucket)) + 1  # where the sorted lengths enter a new bucket
    max_rows = max(1, max_floats // (dim * dim))
    batches = []
    for start, stop in zip(np.r_[0, edges], np.r_[edges, len(order)], strict=True):
        rows = max(1, min(max_rows, max_floats // (int(lengths[stop - 1]) * dim)))
        batches.extend(order[first : min(first + rows, stop)] for first in range(start, stop, rows))
    return batches


def solve_rows(
    matrix: SparseRows,
    quad: torch.Tensor,
    other: torch.Tensor,
    unobserved: float,
    l2: torch.Tensor,
    batches: list[np.ndarray],
) -> torch.Tensor:
    """Exact minimiser of every row's quadratic loss with ``other`` fixed (see the module docstring).

    Args:
        matrix: the rows' entries, values ``c`` (confidence of each liked pair).
        quad: ``(nnz,)`` ``a`` of each entry, aligned with ``matrix``'s entries.
        other: ``(n_cols, dim)`` the fixed side's vectors.
        unobserved: α0.
        l2: ``(n_rows,)`` λ_r of each row.
        batches: row indices grouped by :func:`row_batches`.

    Returns:
        ``(n_rows, dim)`` the solved vectors.
    """
    dim = other.shape[1]
    gram = unobserved * (other.T @ other)  # (dim, dim) α0 HᵀH, shared by every row
    out = torch.empty(len(l2), dim, device=other.device, dtype=other.dtype)
    counts = matrix.counts
    for batch in batches:
        rows = torch.from_numpy(batch).to(other.device)
        length = max(int(counts[rows].max()), 1)
        slot = torch.arange(length, device=other.device)  # (L,)
        present = slot[None, :] < counts[rows][:, None]  # (R, L)
        position = (matrix.indptr[rows][:, None] + slot[None, :]).clamp(max=max(len(matrix.index) - 1, 0))
        if len(matrix.index):
            vectors = other[matrix.index[position]].mul_(present[..., None])  # (R, L, dim), zero padding
            conf = matrix.values[position] * present  # (R, L)
            a = quad[position] * present
        else:
            vectors = torch.zeros(len(rows), length, dim, device=other.device, dtype=other.dtype)
            conf = a = torch.zeros(len(rows), length, device=other.device, dtype=other.dtype)
        # A batch's systems are up to MAX_BATCH_FLOATS each: built in place, as a fresh block per term page-faults.
        lhs = torch.bmm(vectors.transpose(1, 2) * a[:, None, :], vectors).add_(gram)
        lhs.diagonal(dim1=1, dim2=2).add_(l2[rows, None])  # + λ_r I
        rhs = torch.bmm(vectors.transpose(1, 2), conf[..., None])  # (R, dim, 1)
        factor, _ = torch.linalg.cholesky_ex(lhs)  # lhs is symmetric positive definite (λ_r > 0)
        out[rows] = torch.cholesky_solve(rhs, factor).squeeze(-1)
    return out


class IALS(RecommenderModule):
    """iALS with frequency-scaled L2 (Rendle et al. 2021), trained by exact alternating sweeps.

    Args:
        dim: size of the user and item vectors.
        unobserved_weight: α0, the weight of every (user, item) pair in the ``ŷ²`` term.
        l2: λ.
        l2_exponent: ν, the frequency scaling of λ (0 = a plain λ).
        confidence: ``binary`` (c = 1, Rendle et al.) or ``rating`` (c = 1 + alpha · rating, Hu et al. 2008).
        alpha: α of ``confidence: rating``.
        init_std: the vectors start from N(0, (init_std / sqrt(dim))²), as in Rendle et al.
        positive_threshold: a rating >= this is a liked pair (None = every rated pair).
        **kwargs: see :class:`RecommenderModule`.
    """

    provides = frozenset({"alternating", "item_vectors", "similar_items", "export"})
    test_inputs = "read"  # folds users in from the ratings given

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        dim: int = 64,
        unobserved_weight: float = 0.1,
        l2: float = 0.01,
        l2_exponent: float = 1.0,
        confidence: str = "binary",
        alpha: float = 1.0,
        init_std: float = 0.1,
        positive_threshold: float | None = 4.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, loss, **kwargs)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        if confidence not in CONFIDENCES:
            raise ConfigError(
                f"model.confidence={confidence!r} is unknown; use one of {', '.join(CONFIDENCES)}."
            )
        if int(dim) < 1 or float(unobserved_weight) < 0 or float(l2) <= 0:
            raise ConfigError(
                f"model=ials needs model.dim >= 1, model.unobserved_weight >= 0 and model.l2 > 0; got dim={dim}, "
                f"unobserved_weight={unobserved_weight}, l2={l2}."
            )
        self.dim, self.unobserved, self.l2 = int(dim), float(unobserved_weight), float(l2)
        self.l2_exponent, self.confidence, self.alpha = float(l2_exponent), confidence, float(alpha)
        self.positive_threshold = positive_threshold
        scale = float(init_std) / self.dim**0.5
        n_users, n_items = self.schema.n_users, self.schema.n_items
        self.register_buffer("user_factors", torch.randn(n_users, self.dim) * scale)
        self.register_buffer("item_factors", torch.randn(n_items, self.dim) * scale)
        self.by_user = SparseRows(n_users, n_items)  # values c_ui
        self.by_item = SparseRows(n_items, n_users)  # the same entries, item-major
        self.register_buffer("user_quad", torch.zeros(0), persistent=False)  # a_ui in by_user's order
        self.register_buffer("item_quad", torch.zeros(0), persistent=False)
        self.register_buffer("user_l2", torch.zeros(n_users), persistent=False)  # λ_u
        self.register_buffer("item_l2", torch.zeros(n_items), persistent=False)
        self._batches: dict[str, list[np.ndarray]] = {}

    # ------------------------------------------------------------------ data
    def attach(self, dm: Any) -> None:
        super().attach(dm)
        self.attach_matrix(
            positives_matrix(dm.corpus, dm.split.train, self.positive_threshold), fit_device(self)
        )

    def attach_matrix(self, liked: sp.csr_matrix, device: torch.device | str = "cpu") -> None:
        """Fit on this users x items matrix of liked pairs (values: their ratings)."""
        confidence = self._confidence(liked)
        for side, matrix in (("user", confidence), ("item", confidence.T.tocsr())):
            rows: SparseRows = getattr(self, f"by_{side}")
            rows.set(matrix, device)
            c = rows.values
            setattr(self, f"{side}_quad", c - self.unobserved if self.confidence == "rating" else c.clone())
            counts = rows.counts.double()
            setattr(
                self,
                f"{side}_l2",
                (self.l2 * (counts + self.unobserved * rows.n_cols) ** self.l2_exponent).float(),
            )
            self._batches[side] = row_batches(rows.counts.cpu().numpy(), self.dim)

    def read_inputs(self, corpus: Any, split: Any, rows: np.ndarray) -> None:
        """Fold users in: with the item vectors fixed, each user's vector is solved exactly from every liked
        rating the test may know (one half-sweep; Rendle et al.'s iALS for new histories)."""
        self.attach_matrix(positives_matrix(corpus, rows, self.positive_threshold), self.item_factors.device)
        self.user_factors = solve_rows(self.by_user, self.user_quad, self.item_factors, self.unobserved,
                                       self.user_l2, self._batches["user"])  # fmt: skip

    def _confidence(self, liked: sp.csr_matrix) -> sp.csr_matrix:
        """The liked pairs with their confidence ``c_ui`` as values."""
        out = liked.copy().astype(np.float32)
        out.data = (1.0 + self.alpha * out.data) if self.confidence == "rating" else np.ones_like(out.data)
        return out

    # ------------------------------------------------------------------ training
    def sweep(self) -> torch.Tensor:
        """Solve every user, then every item, exactly; returns the objective after the sweep, per liked pair."""
        self.user_factors = solve_rows(self.by_user, self.user_quad, self.item_factors, self.unobserved,
                                       self.user_l2, self._batches["user"])  # fmt: skip
        self.item_factors = solve_rows(self.by_item, self.item_quad, self.user_factors, self.unobserved,
                                       self.item_l2, self._batches["item"])  # fmt: skip
        return self.objective() / max(len(self.by_user.values), 1)

    def objective(self) -> torch.Tensor:
        """L of the module docstring at the current vectors, computed in float64."""
        users, items = self.user_factors.double(), self.item_factors.double()
        owner, item = self.by_user.owners(), self.by_user.index
        predicted = (users[owner] * items[item]).sum(-1)  # ŷ of each liked pair
        c, a = self.by_user.values.double(), self.user_quad.double()
        observed = (a * predicted**2 - 2 * c * predicted + c).sum()
        everything = self.unobserved * ((users.T @ users) * (items.T @ items)).sum()  # α0 Σ_u Σ_i ŷ²
        penalty = (self.user_l2.double() * users.pow(2).sum(-1)).sum() + (
            self.item_l2.double() * items.pow(2).sum(-1)
        ).sum()
        return observed + everything + penalty

    def training_step(self, batches: list[dict[str, torch.Tensor]], batch_idx: int) -> None:
        """One exact sweep per batch of the ``sweep`` view (one per epoch); no optimiser, no gradients."""
        for batch in batches:
            with torch.no_grad():
                loss = self.loss_fn(self, batch)
            self.train_loss_sum = self.train_loss_sum.to(loss.device) + loss.float()
            self.train_batches += 1

    def configure_optimizers(self) -> None:
        return None

    # ------------------------------------------------------------------ scoring
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user_factors[users] * self.item_factors[items]).sum(-1)

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return matmul_into(self.user_factors[users], self.item_factors.T, out)  # (B, n_items)

    def user_embeddings(self, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.user_factors if users is None else self.user_factors[users]

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_factors if items is None else self.item_factors[items]

    def item_similarity_vectors(self) -> torch.Tensor:
        return self.item_factors
