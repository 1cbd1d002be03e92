"""The leaderboard's paired test on hand-built runs: Holm, the reference chosen on validation, the pairing by seed
and user, p-values equal to scipy's on the hand-computed differences, empty cells where files are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from recarena.report import leaderboard, leaderboard_markdown, load_runs
from recarena.significance import PerUserReader, holm, per_user_differences, validation_twin, wilcoxon_p
from tests.test_report import _md_rows, _payload, _write, _write_per_user

# config -> seed -> (per-user ndcg@10 of users 1..6, None = user not evaluated in that run).
# B is best on validation, A on test: the reference must be B.
PER_USER = {
    "A": {1: [0.6, 0.2, 0.1, 0.5, 0.3, None], 2: [0.7, 0.1, 0.0, 0.6, 0.4, 0.3]},
    "B": {1: [0.5, 0.2, 0.0, 0.3, 0.1, 0.0], 2: [0.4, 0.3, 0.0, 0.3, 0.2, 0.1]},
    "E": {1: [0.5, 0.2, 0.0, 0.3, 0.1, 0.0], 2: [0.4, 0.3, 0.0, 0.3, 0.2, 0.05]},
    "C": {1: [0.9] * 6, 2: [0.9] * 6},  # its files are deleted below: no test, empty cells
    "D": {3: [0.9] * 6},  # a seed B never ran: nothing to pair with
}
# config -> (test/ndcg@10, val/ndcg@10, test/rmse, val/rmse) for every seed of it.
SCORES = {
    "A": (0.35, 0.20, 0.95, 0.90),
    "B": (0.30, 0.25, 0.90, 0.95),
    "E": (0.28, 0.22, 0.99, 0.99),
    "C": (0.10, 0.05, 1.10, 1.10),
    "D": (0.05, 0.04, 1.20, 1.20),
}
# Per-user differences A - B by hand, averaged over the seeds each user has in both (user 6: seed 2 only).
DIFF_A = np.array([(0.1 + 0.3) / 2, (0.0 - 0.2) / 2, (0.1 + 0.0) / 2, (0.2 + 0.3) / 2, (0.2 + 0.2) / 2, 0.2])
DIFF_E = np.array([0, 0, 0, 0, 0, -0.05 / 2])


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    num = 0
    for cfg, seeds in PER_USER.items():
        test_ndcg, val_ndcg, test_rmse, val_rmse = SCORES[cfg]
        for seed, values in seeds.items():
            run = tmp_path / str(num)
            overrides = ["model=mf", f"+tag={cfg}", f"seed={seed}"]
            _write(run, _payload("mf", seed, overrides, {"test/ndcg@10": test_ndcg, "test/rmse": test_rmse},
                                 {"val/ndcg@10": val_ndcg, "val/rmse": val_rmse}, True))
            kept = [i for i, v in enumerate(values) if v is not None]
            rmse = [1.0 - 0.1 * v for v in values if v is not None]  # lower where ndcg is higher
            _write_per_user(run, {"ndcg@10": [values[i] for i in kept], "rmse": rmse}, [i + 1 for i in kept])
            if cfg == "C":
                (run / "per_user_metrics.parquet").unlink()
            num += 1
    return tmp_path


def _row(board: pd.DataFrame, cfg: str) -> pd.Series:
    return board.loc[board["config_key"] == f"+tag={cfg} model=mf"].iloc[0]


def test_holm_on_a_hand_computed_example() -> None:
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06.
    adjusted = holm([0.01, 0.04, 0.03, 0.005, np.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and np.isnan(adjusted[4])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 0.5 * 2 = 1.0, capped; 0.6 keeps the max 1.0
    assert holm([0.2]) == pytest.approx([0.2]) and holm([]).size == 0


def test_wilcoxon_edge_cases() -> None:
    assert wilcoxon_p(np.zeros(5)) == 1.0  # identical models
    assert np.isnan(wilcoxon_p(np.array([np.nan])))  # nothing to pair
    assert wilcoxon_p(DIFF_A) == pytest.approx(wilcoxon(DIFF_A, zero_method="pratt").pvalue)


def test_reference_is_the_best_row_on_validation(sweep: Path) -> None:
    board = leaderboard(load_runs([sweep]))
    assert board.attrs["primary"] == "test/ndcg@10" and validation_twin("test/ndcg@10") == "val/ndcg@10"
    assert board.loc[0, "config_key"] == "+tag=A model=mf"  # A leads on test ...
    ref = board.attrs["reference"]
    assert board.loc[ref, "config_key"] == "+tag=B model=mf"  # ... but B on validation is the reference
    assert board["is_reference"].tolist() == [i == ref for i in board.index]
    # Lower is better: on val/rmse A wins (0.90), though B has the better test rmse.
    by_rmse = leaderboard(load_runs([sweep]), primary="test/rmse")
    assert by_rmse.loc[by_rmse.attrs["reference"], "config_key"] == "+tag=A model=mf"
    assert by_rmse.loc[0, "config_key"] == "+tag=B model=mf"


def test_p_values_are_scipy_on_the_paired_differences_holm_adjusted(sweep: Path) -> None:
    runs = load_runs([sweep])
    by_cfg = {c: runs[runs["config_key"] == f"+tag={c} model=mf"] for c in PER_USER}
    pairs = per_user_differences(by_cfg["A"], by_cfg["B"], PerUserReader("ndcg@10"))
    assert pairs.index.tolist() == [1, 2, 3, 4, 5, 6]  # user ids; user 6 from seed 2 alone
    assert pairs.to_numpy() == pytest.approx(DIFF_A)

    raw_a = wilcoxon(DIFF_A, zero_method="pratt").pvalue
    raw_e = wilcoxon(DIFF_E, zero_method="pratt").pvalue
    # Holm with m = 2 tested rows (C and D could not be paired): the smaller p doubled, the larger kept
    # (or raised to the smaller's adjusted value).
    first = min(1.0, 2 * min(raw_a, raw_e))
    holm_a, holm_e = (first, max(first, raw_e)) if raw_a <= raw_e else (max(first, raw_a), first)

    board = leaderboard(runs)
    a, e = _row(board, "A"), _row(board, "E")
    assert a["p_value"] == pytest.approx(holm_a) and e["p_value"] == pytest.approx(holm_e)
    assert a["diff_vs_best"] == pytest.approx(DIFF_A.mean()) and e["diff_vs_best"] == pytest.approx(DIFF_E.mean())
    assert a["paired_users"] == 6 and e["paired_users"] == 6
    assert a["significant"] == (holm_a < 0.05) and e["significant"] == (holm_e < 0.05)


def test_rows_that_cannot_be_paired_get_empty_cells(sweep: Path) -> None:
    board = leaderboard(load_runs([sweep]))
    for cfg in ("C", "D", "B"):  # no files; no shared seed; the reference itself
        row = _row(board, cfg)
        assert pd.isna(row["p_value"]) and pd.isna(row["diff_vs_best"]) and pd.isna(row["significant"])
    header, _, *rows = _md_rows(leaderboard_markdown(board))
    at = header.index("Δ vs ref")
    cells = {r[0]: r[at : at + 3] for r in rows}
    assert cells["`+tag=C`"] == cells["`+tag=D`"] == ["", "", ""] and cells["`+tag=B`"] == ["ref", "", ""]
    assert cells["`+tag=A`"][0] == f"{DIFF_A.mean():+.4f}"


def test_runs_on_other_splits_are_not_paired(sweep: Path) -> None:
    """Same seed but another split (fingerprints differ): other held-out items, so no pair."""
    runs = load_runs([sweep])
    runs["split_fingerprint"] = np.where(runs["config_key"].str.contains("tag=A") & (runs["seed"] == 1), "x", "y")
    a, b = (runs[runs["config_key"] == f"+tag={c} model=mf"] for c in "AB")
    pairs = per_user_differences(a, b, PerUserReader("ndcg@10"))
    assert pairs.to_numpy() == pytest.approx([0.3, -0.2, 0.0, 0.3, 0.2, 0.2])  # seed 2 alone
