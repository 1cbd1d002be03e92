"""bench/filed_sweep.py: f904b75's compare_families presets still compose to the settings its runs had, and the
bench compares two sweeps' metrics run by run (hand-written sweep dirs, so the counts are known)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import filed_sweep  # noqa: E402

#: f904b75's families, as its conf/family/ named them, with the model and loss each preset picked.
FILED = {"popularity": ("Popularity", "NoLoss"), "mf": ("MatrixFactorization", "MSELoss"),
         "mf_bpr": ("MatrixFactorization", "BPRLoss"), "mlp": ("CollabMLP", "MSELoss"),
         "twotower_mse": ("TwoTower", "MSELoss"), "twotower_logq": ("TwoTower", "LogQCorrectedSoftmaxLoss"),
         "twotower_inbatch": ("TwoTower", "InBatchSoftmaxLoss"), "siamese": ("Siamese", "TripletLoss")}  # fmt: skip


def test_the_bench_finds_the_eight_filed_presets() -> None:
    assert filed_sweep.families() == sorted(filed_sweep.PREFIX + family for family in FILED)


@pytest.mark.parametrize("family", sorted(FILED))
def test_a_filed_preset_composes_to_f904b75_s_settings(family: str, tmp_path: Path) -> None:
    cfg = compose_config([f"hydra.searchpath=[file://{filed_sweep.PRESETS}]", f"family={filed_sweep.PREFIX}{family}"],
                         tmp_path)  # fmt: skip
    model, loss = FILED[family]
    assert cfg.model._target_.endswith("." + model) and cfg.loss._target_.endswith("." + loss)
    assert (cfg.batch_size, cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == (1024, 20, 3)
    assert (cfg.optimizer.lr, cfg.eval.tie_seed) == (0.005, None)


def _write_run(root: Path, index: int, family: str, seed: int, val: dict, test: dict) -> None:
    run = root / str(index)
    run.mkdir(parents=True)
    metrics = {"overrides": [f"family={family}", f"seed={seed}"], "seed": seed, "val": val, "test": test,
               "wall_seconds": 2.0, "epochs": 5}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_compare_counts_identical_and_differing_metrics_run_by_run(tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    _write_run(before, 0, "mf", 42, {"val/rmse": 0.9}, {"test/rmse": 1.0, "test/mae": 0.8})
    _write_run(before, 1, "mf", 43, {"val/rmse": 0.7}, {"test/rmse": 0.6})
    _write_run(before, 2, "siamese", 42, {"val/ndcg@10": 0.1}, {"test/ndcg@10": 0.2})  # not in after: left out
    _write_run(after, 5, filed_sweep.PREFIX + "mf", 42, {"val/rmse": 0.9}, {"test/rmse": 1.25, "test/mae": 0.8})
    _write_run(after, 6, filed_sweep.PREFIX + "mf", 43, {"val/rmse": 0.7, "val/new": 1.0}, {"test/rmse": 0.6})
    rows = filed_sweep.compare(filed_sweep.read_sweep(before), filed_sweep.read_sweep(after))
    assert set(rows) == {"mf"}
    assert (rows["mf"]["runs"], rows["mf"]["same"], rows["mf"]["differ"]) == (2, 4, 1)
    assert rows["mf"]["max_diff"] == pytest.approx(0.25)
    assert (rows["mf"]["before_s"], rows["mf"]["after_s"]) == (4.0, 4.0)
