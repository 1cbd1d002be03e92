"""bench/filed_sweep.py: f904b75's compare_families presets still compose to the settings its runs had (the keys
they set and the defaults of today they rely on), and the bench compares two sweeps' metrics run by run
(hand-written sweep dirs, so the counts are known)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

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


#: Settings every run of f904b75's sweep had, read from its resolved config.yaml files, and the two eval keys added
#: since at the values that give f904b75's behaviour (lower index first on ties, test inputs = training ratings).
#: The presets set batch size, epochs, patience, lr, weight decay and the tie order; today's defaults must still give
#: the rest (a default that changes would change the filed workload).
F904B75_SETTINGS = {"batch_size": 1024, "trainer.max_epochs": 20, "callbacks.early_stopping.patience": 3,
                    "optimizer.lr": 0.005, "eval.tie_seed": None,
                    "optimizer._target_": "torch.optim.Adam", "optimizer.weight_decay": 0.0, "data.name": "ml-100k",
                    "data.curation.min_user_ratings": 0, "data.curation.min_item_ratings": 0,
                    "data.curation.fraction": 1.0, "split.name": "temporal", "split.val_fraction": 0.1,
                    "split.test_fraction": 0.1, "split.min_user_ratings": 3, "eval.ks": [10, 20],
                    "eval.relevance_threshold": 4.0, "eval.test_known": "train", "minibatches_per_step": 8,
                    "trainer.precision": "32-true", "callbacks.early_stopping.min_delta": 0.0}  # fmt: skip


@pytest.mark.parametrize("family", sorted(FILED))
def test_a_filed_preset_composes_to_f904b75_s_settings(family: str, tmp_path: Path) -> None:
    cfg = compose_config([f"hydra.searchpath=[file://{filed_sweep.PRESETS}]", f"family={filed_sweep.PREFIX}{family}"],
                         tmp_path)  # fmt: skip
    model, loss = FILED[family]
    assert cfg.model._target_.endswith("." + model) and cfg.loss._target_.endswith("." + loss)
    settings = {key: OmegaConf.select(cfg, key) for key in F904B75_SETTINGS}
    assert {key: list(v) if OmegaConf.is_list(v) else v for key, v in settings.items()} == F904B75_SETTINGS


def _write_run(root: Path, index: int, family: str, seed: int, val: dict, test: dict) -> None:
    run = root / str(index)
    run.mkdir(parents=True)
    metrics = {"overrides": [f"family={family}", f"seed={seed}"], "seed": seed, "val": val, "test": test,
               "wall_seconds": 2.0, "epochs": 5}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_compare_counts_identical_differing_and_one_sided_metrics_run_by_run(tmp_path: Path, capsys) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    _write_run(before, 0, "mf", 42, {"val/rmse": 0.9}, {"test/rmse": 1.0, "test/mae": 0.8})
    _write_run(before, 1, "mf", 43, {"val/rmse": 0.7, "val/gone": 2.0}, {"test/rmse": 0.6})
    _write_run(after, 5, filed_sweep.PREFIX + "mf", 42, {"val/rmse": 0.9}, {"test/rmse": 1.25, "test/mae": 0.8})
    _write_run(after, 6, filed_sweep.PREFIX + "mf", 43, {"val/rmse": 0.7, "val/new": 1.0}, {"test/rmse": 0.6})
    rows = filed_sweep.compare(filed_sweep.read_sweep(before), filed_sweep.read_sweep(after))
    assert set(rows) == {"mf"}
    mf = rows["mf"]
    assert (mf.runs, mf.same, mf.differing) == (2, 4, 1)
    assert mf.differ == {"test/rmse": pytest.approx(0.25)}
    assert (mf.only_before, mf.only_after) == ({"val/gone"}, {"val/new"})
    assert mf.seconds == [4.0, 4.0]
    assert filed_sweep.report(filed_sweep.read_sweep(before), filed_sweep.read_sweep(after))
    out = capsys.readouterr().out
    assert "mf: val/gone only before" in out and "mf: test/rmse differs, by up to 2.50e-01 of its value" in out
    assert "4 of the before sweep's 6 metrics identical" in out


def test_a_run_in_one_sweep_only_fails_the_report(tmp_path: Path, capsys) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    for seed in (42, 43):
        _write_run(before, seed, "siamese", seed, {"val/ndcg@10": 0.1}, {"test/ndcg@10": 0.2})
    _write_run(after, 0, filed_sweep.PREFIX + "siamese", 42, {"val/ndcg@10": 0.1}, {"test/ndcg@10": 0.2})
    assert filed_sweep.report(filed_sweep.read_sweep(before), filed_sweep.read_sweep(before))
    assert not filed_sweep.report(filed_sweep.read_sweep(before), filed_sweep.read_sweep(after))
    assert "siamese seed 43 ran in only one sweep" in capsys.readouterr().out
