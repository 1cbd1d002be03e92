"""The metric registry is the one place a metric's direction and kind are known: it covers exactly what the
evaluator logs, and the config's monitor direction, the leaderboard and the benchmark all read it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recarena.benchmark import Settings
from recarena.evaluation.metrics import RankingMetrics, metric_names
from recarena.evaluation.registry import (
    ACCURACY_METRICS,
    BEYOND_METRICS,
    METRICS,
    PER_USER_METRICS,
    lower_is_better,
    metric_of,
    monitor_mode,
)
from tests.conftest import compose_config


@pytest.mark.parametrize(
    ("logged", "lower"),
    [("test/rmse", True), ("val/mae", True), ("test/popularity@10", True), ("val/users_skipped", True),
     ("wall_seconds", True), ("train/loss", True), ("test/ndcg@10", False), ("test/recall@20", False),
     ("val/long_tail@10", False), ("test/coverage@5", False), ("val/users_ranked", False)],
)  # fmt: skip
def test_direction_of_each_logged_name(logged: str, lower: bool) -> None:
    assert lower_is_better(logged) is lower
    assert monitor_mode(logged) == ("min" if lower else "max")


def test_the_registry_holds_exactly_what_the_evaluator_logs() -> None:
    logged = {metric_of(name).name for name in metric_names(ks=[5, 10], ratings=True)}
    assert logged == set(METRICS)


def test_ranking_metrics_compute_the_registry_s_metrics_in_its_order() -> None:
    metrics = RankingMetrics(ks=[3], n_items=4, item_popularity=torch.tensor([3.0, 2.0, 1.0, 1.0]))
    batch = {"users": torch.tensor([0]), "excl_row": torch.tensor([], dtype=torch.long),
             "excl_item": torch.tensor([], dtype=torch.long), "held_row": torch.tensor([0]),
             "held_item": torch.tensor([1]), "held_rating": torch.tensor([5.0])}  # fmt: skip
    metrics.update(torch.tensor([[0.1, 0.9, 0.5, 0.2]]), batch)
    names = [name.partition("@")[0] for name in metrics.compute() if "@" in name]
    assert names == [*ACCURACY_METRICS, *BEYOND_METRICS]
    assert set(PER_USER_METRICS) == {name for name in names if METRICS[name].per_user}


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [(["model=mf"], "min"), (["model=mf", "loss=bpr"], "max"), (["model=mf", "eval.monitor=val/mae"], "min"),
     (["model=mf", "loss=bpr", "eval.monitor=val/recall@20"], "max")],
)  # fmt: skip
def test_the_monitor_direction_follows_the_monitored_metric(overrides: list[str], mode: str, tmp_path: Path) -> None:
    cfg = compose_config(overrides, tmp_path)
    assert cfg.eval.monitor_mode == mode
    assert cfg.callbacks.early_stopping.mode == mode and cfg.callbacks.model_checkpoint.mode == mode


def test_the_benchmark_follows_the_registry() -> None:
    assert Settings(families=[], trials=1, report_seeds=[42], objective="val/rmse", overrides=[]).mode == "min"
    assert Settings(families=[], trials=1, report_seeds=[42], objective="val/mrr@10", overrides=[]).mode == "max"


def test_reading_the_registry_imports_no_torch() -> None:
    code = "import sys, recarena.evaluation.registry, recarena.report; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
