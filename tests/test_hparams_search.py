"""Optuna searches (conf/hparams_search/): the presets compose, optimise the metric early stopping follows in the
right direction, and a real tiny search leaves the best trial at the sweep root."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf

from recarena.build import compose
from recarena.hparams import best_trial, summary_line
from recarena.paths import CONF_DIR
from tests.conftest import FAST, TINY_DATA
from tests.test_train import _run_train

PRESETS = {"mf_optuna": ("val/rmse", "minimize"), "twotower_optuna": ("val/ndcg@10", "maximize")}


def _compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The composed config with its hydra node, where the sweeper lives."""
    return compose(*overrides)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_composes_and_direction_follows_the_monitor(preset: str) -> None:
    cfg = _compose_with_hydra([f"hparams_search={preset}", *TINY_DATA, "split=random", "hydra.sweeper.n_trials=3"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_.endswith("TPESampler")
    assert sweeper.sampler.seed is not None and sweeper.n_jobs == 1 and sweeper.n_trials == 3
    assert (cfg.data.name, cfg.split.name) == ("synthetic", "random")  # data=/split= still apply
    assert (cfg.eval.monitor, sweeper.direction) == PRESETS[preset]
    assert cfg.hydra.callbacks.best_trial._target_ == "recarena.hparams.BestTrialCallback"
    # Every dimension parses as an Optuna distribution and names a key the composed config has.
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(space) == set(sweeper.params) and not fixed
    for key in space:
        assert OmegaConf.select(cfg, key) is not None, f"{preset}: {key} is not a config key"


def test_direction_follows_another_loss() -> None:
    cfg = _compose_with_hydra(["hparams_search=mf_optuna", "loss=bpr"])
    assert (cfg.eval.monitor, cfg.eval.monitor_mode, cfg.hydra.sweeper.direction) == ("val/ndcg@10", "max", "maximize")


def test_best_trial_joins_the_sweepers_result_with_its_run(tmp_path: Path) -> None:
    """Same params in two runs (a repeated trial), a NaN trial and a failed one (no metrics.json)."""
    params = {"optimizer.lr": 0.003, "model.n_factors": 64}
    runs = {0: ("optimizer.lr=0.01 model.n_factors=16", 0.95), 1: ("optimizer.lr=0.003 model.n_factors=64", 0.97),
            2: ("optimizer.lr=0.003 model.n_factors=64", 0.91), 3: ("optimizer.lr=0.1 model.n_factors=16", math.nan)}
    for job, (overrides, value) in runs.items():
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(
            {"overrides": overrides.split(), "val": {"val/rmse": value}, "test": {"test/rmse": value + 0.04}}))
    (tmp_path / "4").mkdir()
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": params, "best_value": 0.91}),
                   tmp_path / "optimization_results.yaml")
    best = best_trial(tmp_path, "val/rmse", "minimize")
    assert best is not None and best["trial"] == 2 and best["run_dir"] == str(tmp_path / "2")
    assert (best["trials"], best["trials_completed"]) == (5, 3)
    assert best["test"]["test/rmse"] == pytest.approx(0.95)
    assert summary_line(best).startswith(
        "best val/rmse 0.91 (trial 2 of 5) with optimizer.lr=0.003, model.n_factors=64; test/rmse 0.95")


def test_mf_search_end_to_end(tmp_path: Path, data_cache: Path) -> None:
    sweep = tmp_path / "search"
    proc = _run_train(
        ["-m", "hparams_search=mf_optuna", "hydra.sweeper.n_trials=3", *TINY_DATA, *FAST, f"hydra.sweep.dir={sweep}"],
        tmp_path, {"RECARENA_DATA": str(data_cache), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert sorted(trials) == [0, 1, 2]
    values = {job: m["val"]["val/rmse"] for job, m in trials.items()}
    space = set(OmegaConf.load(Path(CONF_DIR) / "search_space" / "mf.yaml"))
    proposals = {frozenset(o for o in m["overrides"] if o.split("=")[0] in space) for m in trials.values()}
    assert len(proposals) == 3 and all(len(p) == len(space) for p in proposals)

    results = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    assert results["best_value"] == pytest.approx(min(values.values()))
    assert set(results["best_params"]) == space

    best = json.loads((sweep / "best_trial.json").read_text())
    job = min(values, key=values.get)
    assert (best["monitor"], best["direction"], best["trial"], best["trials"]) == ("val/rmse", "minimize", job, 3)
    assert best["best_params"] == results["best_params"] and best["test"] == trials[job]["test"]
    assert f"best val/rmse {min(values.values()):.4g} (trial {job} of 3) with optimizer.lr=" in proc.stdout

    assert len(pd.read_csv(sweep / "leaderboard.csv")) == 3  # the leaderboard callback still runs
    assert (sweep / "leaderboard.md").exists()
