"""The reference families (``model=ease``, ``itemknn``, ``ials``) against direct computations on tiny matrices:
EASE's closed form against a dense inverse and its own optimality conditions, ItemKNN's neighbours against a
brute-force loop, iALS's solves against a direct least-squares solve and its objective over sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recarena.errors import ConfigError
from recarena.losses import AlternatingLoss, NoLoss
from recarena.models.ease import EASE, ease_weights
from recarena.models.ials import IALS, row_batches, solve_rows
from recarena.models.interactions import SparseRows
from recarena.models.itemknn import ItemKNN, neighbour_weights, top_k_per_row
from recarena.run import train
from recarena.schema import Schema


def random_binary(n_users: int = 9, n_items: int = 7, density: float = 0.4, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[0] = 0  # a user with no liked item
    return sp.csr_matrix(dense)


# ----------------------------------------------------------------------------------------------- EASE
def test_ease_weights_match_a_dense_inverse() -> None:
    x = random_binary()
    lam = 2.5
    dense = x.toarray().astype(np.float64)
    p = np.linalg.inv(dense.T @ dense + lam * np.eye(x.shape[1]))
    expected = np.eye(x.shape[1]) - p / np.diag(p)[None, :]  # Steck 2019: B = I - P diag(1/diag(P))
    got = ease_weights(x, lam).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.all(np.diag(got) == 0)


def test_ease_weights_are_the_constrained_least_squares_minimiser() -> None:
    # The gradient of ‖X - XB‖² + λ‖B‖² vanishes on every off-diagonal entry (the diagonal is held at 0).
    x = random_binary(seed=1).toarray().astype(np.float64)
    lam = 1.0
    b = ease_weights(sp.csr_matrix(x), lam).double().numpy()
    gradient = -2 * x.T @ (x - x @ b) + 2 * lam * b
    off_diagonal = ~np.eye(x.shape[1], dtype=bool)
    np.testing.assert_allclose(gradient[off_diagonal], 0.0, atol=1e-4)


def test_ease_refuses_a_catalogue_above_its_limit_naming_the_knob() -> None:
    schema = Schema(n_users=3, n_items=50, rating_low=1, rating_high=5, global_mean=3)
    with pytest.raises(ConfigError, match=r"model.max_items=40.*data.curation.min_item_ratings"):
        EASE(schema, NoLoss(), max_items=40)
    with pytest.raises(ConfigError, match="model.l2 must be positive"):
        EASE(schema, NoLoss(), l2=0)


# ----------------------------------------------------------------------------------------------- ItemKNN
def brute_force_neighbours(x: np.ndarray, k: int, shrink: float, alpha: float) -> np.ndarray:
    """S[i, j] = c_ij / (n_i^(1-α) n_j^α + h) for j among the k largest of row i (ties: lower j), else 0."""
    n_items = x.shape[1]
    counts = x.sum(0)
    full = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            co = float(x[:, i] @ x[:, j])
            if i != j and co > 0:
                full[i, j] = co / (counts[i] ** (1 - alpha) * counts[j] ** alpha + shrink)
    out = np.zeros_like(full)
    for i in range(n_items):
        ranked = sorted((j for j in range(n_items) if full[i, j] > 0), key=lambda j: (-full[i, j], j))
        for j in ranked[:k]:
            out[i, j] = full[i, j]
    return out


@pytest.mark.parametrize(
    ("k", "shrink", "alpha"), [(2, 0.0, 0.5), (3, 1.5, 0.5), (10, 0.0, 0.8), (1, 2.0, 0.2)]
)
def test_itemknn_neighbours_match_a_brute_force_loop(k: int, shrink: float, alpha: float) -> None:
    x = random_binary(n_users=12, n_items=8, density=0.5, seed=3)
    got = neighbour_weights(x, k, shrink, alpha).toarray()
    np.testing.assert_allclose(
        got, brute_force_neighbours(x.toarray(), k, shrink, alpha), rtol=1e-6, atol=1e-7
    )


def test_top_k_per_row_breaks_ties_by_lower_column() -> None:
    rows = np.array([0, 0, 0, 1, 1])
    cols = np.array([5, 2, 3, 0, 1])
    values = np.array([1.0, 1.0, 0.5, 2.0, 3.0])
    assert top_k_per_row(rows, cols, values, 1).tolist() == [False, True, False, False, True]


def test_itemknn_scores_sum_the_neighbour_weights_of_liked_items() -> None:
    x = random_binary(n_users=10, n_items=8, density=0.5, seed=4)
    schema = Schema(n_users=10, n_items=8, rating_low=1, rating_high=5, global_mean=3)
    model = ItemKNN(schema, NoLoss(), k=3)
    model.history.set(x)
    s = neighbour_weights(x, 3)
    model.neighbours.set(s)
    users = torch.arange(10)
    expected = x.toarray() @ s.toarray().T  # score(u, i) = Σ_j x_uj S[i, j]
    np.testing.assert_allclose(model.score_all(users).numpy(), expected, atol=1e-6)
    items = torch.tensor([0, 3, 7, 1, 2, 5, 6, 4, 0, 1])
    np.testing.assert_allclose(model(users, items).numpy(), expected[np.arange(10), items.numpy()], atol=1e-6)


# ----------------------------------------------------------------------------------------------- iALS
def direct_solution(
    x: np.ndarray, confidence: np.ndarray, other: np.ndarray, alpha0: float, reg: float, hkv: bool
) -> np.ndarray:
    """One row's minimiser by a least-squares solve of sqrt-weighted rows, the loss written item by item:
    binary: liked (ŷ-1)² + α0 ŷ², other items α0 ŷ²;  rating (HKV): liked c (ŷ-1)², other items α0 ŷ²."""
    weight = np.where(x > 0, confidence if hkv else 1.0 + alpha0, alpha0)
    target = np.where(
        x > 0, 1.0 if hkv else 1.0 / (1.0 + alpha0), 0.0
    )  # (ŷ-1)² + α0ŷ² = (1+α0)(ŷ - 1/(1+α0))² + c
    root = np.sqrt(weight)
    design = np.vstack([root[:, None] * other, np.sqrt(reg) * np.eye(other.shape[1])])
    response = np.concatenate([root * target, np.zeros(other.shape[1])])
    return np.linalg.lstsq(design, response, rcond=None)[0]


def make_ials(x: sp.csr_matrix, **kwargs) -> IALS:
    """An IALS over the ratings matrix ``x`` (rows users), attached without a datamodule."""
    schema = Schema(n_users=x.shape[0], n_items=x.shape[1], rating_low=1, rating_high=5, global_mean=3)
    torch.manual_seed(0)
    model = IALS(schema, AlternatingLoss(), **kwargs)
    model.attach_matrix(x)
    return model


@pytest.fixture
def ratings_matrix() -> sp.csr_matrix:
    rng = np.random.default_rng(5)
    liked = rng.random((11, 9)) < 0.35
    return sp.csr_matrix(np.where(liked, rng.integers(1, 6, size=liked.shape), 0).astype(np.float32))


@pytest.mark.parametrize("confidence", ["binary", "rating"])
def test_ials_user_solve_matches_a_direct_least_squares_solve(
    ratings_matrix: sp.csr_matrix, confidence: str
) -> None:
    model = make_ials(ratings_matrix, dim=4, unobserved_weight=0.3, l2=0.2, l2_exponent=1.0,
                      confidence=confidence, alpha=0.7)  # fmt: skip
    items = torch.randn(ratings_matrix.shape[1], 4, generator=torch.Generator().manual_seed(1))
    got = solve_rows(
        model.by_user,
        model.user_quad,
        items,
        0.3,
        model.user_l2,
        row_batches(model.by_user.counts.numpy(), 4, max_floats=64),
    )  # tiny batches: several of them
    dense = ratings_matrix.toarray()
    n_items = dense.shape[1]
    for u in range(dense.shape[0]):
        reg = 0.2 * ((dense[u] > 0).sum() + 0.3 * n_items) ** 1.0
        expected = direct_solution(dense[u], 1.0 + 0.7 * dense[u], items.double().numpy(), 0.3, reg,
                                   hkv=confidence == "rating")  # fmt: skip
        np.testing.assert_allclose(got[u].numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("confidence", ["binary", "rating"])
def test_ials_objective_never_increases_over_sweeps(ratings_matrix: sp.csr_matrix, confidence: str) -> None:
    model = make_ials(ratings_matrix, dim=3, unobserved_weight=0.2, l2=0.05, confidence=confidence)
    values = [float(model.objective())]
    for _ in range(8):
        model.sweep()
        values.append(float(model.objective()))
    assert all(after <= before * (1 + 1e-6) for before, after in zip(values, values[1:], strict=False)), (
        values
    )
    assert values[-1] < 0.9 * values[0]  # and it does descend


def test_ials_objective_is_the_loss_written_out(ratings_matrix: sp.csr_matrix) -> None:
    model = make_ials(ratings_matrix, dim=3, unobserved_weight=0.25, l2=0.1, l2_exponent=0.5)
    model.sweep()
    w, h = model.user_factors.double().numpy(), model.item_factors.double().numpy()
    x = ratings_matrix.toarray() > 0
    predicted = w @ h.T
    reg_u = 0.1 * (x.sum(1) + 0.25 * x.shape[1]) ** 0.5
    reg_i = 0.1 * (x.sum(0) + 0.25 * x.shape[0]) ** 0.5
    expected = (((predicted - 1) ** 2)[x].sum() + 0.25 * (predicted**2).sum()
                + (reg_u * (w**2).sum(1)).sum() + (reg_i * (h**2).sum(1)).sum())  # fmt: skip
    assert float(model.objective()) == pytest.approx(expected, rel=1e-9)


def test_row_batches_cover_every_row_once_within_the_budget() -> None:
    counts = np.array([0, 5, 1, 9, 3, 3, 7, 2, 0, 4])
    batches = row_batches(counts, dim=2, max_floats=24)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(counts)))
    for batch in batches:
        padded = len(batch) * max(counts[batch].max(), 1) * 2
        assert padded <= 24 or len(batch) == 1


def test_ials_refuses_held_out_users_and_bad_options(make_cfg) -> None:
    with pytest.raises(ConfigError, match="split=users"):
        train(make_cfg("model=ials", "split=users"))
    schema = Schema(n_users=3, n_items=4, rating_low=1, rating_high=5, global_mean=3)
    with pytest.raises(ConfigError, match="model.confidence='hkv'"):
        IALS(schema, AlternatingLoss(), confidence="hkv")


def test_sparse_rows_dense_blocks() -> None:
    x = random_binary(seed=7)
    rows = SparseRows(*x.shape).set(x)
    users = torch.tensor([3, 0, 3, 8])
    np.testing.assert_array_equal(rows.dense(users).numpy(), x.toarray()[users.numpy()])
