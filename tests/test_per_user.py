"""per_user_metrics.parquet: written by the callback of conf/callbacks/default.yaml in every run, one row per
evaluated user, consistent with the run's metrics.json (under DDP: tests/test_train.py::test_ddp_on_two_cpu_processes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recarena.data.corpus import Corpus
from recarena.evaluation.metrics import PER_USER_METRICS
from recarena.run import train


def test_mf_run_saves_per_user_test_metrics(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("model=mf", "eval.ks=[5,10]"))
    run = tmp_path / "run"
    per_user = pd.read_parquet(run / "per_user_metrics.parquet")
    test = result["test"]
    expected = ["user", "user_id", "n_relevant", *(f"{m}@{k}" for m in PER_USER_METRICS for k in (5, 10)),
                "n_rated", "rmse", "mae"]
    assert list(per_user.columns) == expected
    assert per_user["user"].is_monotonic_increasing and per_user["user"].is_unique
    # Every user with a held-out rating is a row; ranking columns only for users with a relevant item.
    assert len(per_user) == test["test/users_ranked"] + test["test/users_skipped"]
    assert per_user["n_relevant"].notna().sum() == test["test/users_ranked"]
    for name in ("recall", "ndcg", "hit_rate", "mrr", "precision"):
        for k in (5, 10):
            assert per_user[f"{name}@{k}"].mean() == pytest.approx(test[f"test/{name}@{k}"], rel=1e-5), name
    # RMSE over ratings from the per-user sums: sqrt(sum_u n_u rmse_u^2 / sum_u n_u); MAE likewise.
    n = per_user["n_rated"].to_numpy(np.float64)
    assert np.sqrt((n * per_user["rmse"] ** 2).sum() / n.sum()) == pytest.approx(test["test/rmse"], rel=1e-5)
    assert (n * per_user["mae"]).sum() / n.sum() == pytest.approx(test["test/mae"], rel=1e-5)
    corpus = Corpus.load(run / "data" / "corpus") if (run / "data" / "corpus").exists() else None
    if corpus is not None:  # the MovieLens id of each user index
        assert (per_user["user_id"].to_numpy() == corpus.user_ids[per_user["user"].to_numpy()]).all()


def test_popularity_has_no_rating_columns(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("model=popularity"))
    per_user = pd.read_parquet(tmp_path / "run" / "per_user_metrics.parquet")
    assert "rmse" not in per_user and len(per_user) == result["test"]["test/users_ranked"]
    assert per_user["ndcg@10"].mean() == pytest.approx(result["test"]["test/ndcg@10"], rel=1e-5)


def test_callback_can_be_switched_off(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("model=popularity", "callbacks.per_user_metrics=null"))
    assert (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "per_user_metrics.parquet").exists()

