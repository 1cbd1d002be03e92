"""Hyper-parameter search with Hydra's Optuna sweeper (``python train.py -m hparams_search=mf_optuna``).

Two small pieces the presets in ``conf/hparams_search/`` use:

- the resolver ``${recarena.optuna_direction:${eval.monitor_mode}}``: Optuna's direction (minimize/maximize)
  derived from the mode early stopping already follows (min/max), so a search can never maximise an error or
  minimise NDCG, whatever ``loss=`` or ``eval.monitor=`` the command line picks (registered by
  :mod:`recarena.resolvers`);
- :class:`BestTrialCallback`: at the end of a search, one readable line with the best trial's metric, parameters
  and run dir, and ``best_trial.json`` at the sweep root (the sweeper's own ``optimization_results.yaml`` has
  the parameters and value, but not which run dir holds the model, nor its test metrics).

Hydra imports this module at start, so it imports no torch.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recarena.atomic import write_json

log = logging.getLogger(__name__)

#: eval.monitor_mode (Lightning's early stopping and checkpoint) -> Optuna's study direction.
DIRECTIONS = {"min": "minimize", "max": "maximize"}


def optuna_direction(mode: str) -> str:
    """``min`` -> ``minimize``, ``max`` -> ``maximize``; anything else is a config error worth a clear message."""
    try:
        return DIRECTIONS[str(mode)]
    except KeyError:
        raise ValueError(f"eval.monitor_mode must be one of {sorted(DIRECTIONS)}, got {mode!r}") from None


class BestTrialCallback(Callback):
    """Hydra callback: after an Optuna search, print the best trial and write ``best_trial.json``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            monitor, mode = (str(OmegaConf.select(config, f"eval.{key}")) for key in ("monitor", "monitor_mode"))
            best = best_trial(sweep_dir, monitor, DIRECTIONS.get(mode))
        except Exception:  # a report bug must not turn a finished search into a failed one
            log.exception("could not summarise the best trial of %s", sweep_dir)
            return
        if best is None:
            return
        write_json(sweep_dir / "best_trial.json", best)
        log.info("best trial: %s", sweep_dir / "best_trial.json")
        # Printed when the command exits, i.e. below the leaderboard table: Hydra runs on_multirun_end callbacks
        # in reverse order, so the leaderboard callback of conf/hydra/default.yaml prints after this one.
        atexit.register(print, summary_line(best), flush=True)


def best_trial(sweep_dir: Path, monitor: str, direction: str | None = None) -> dict[str, Any] | None:
    """The best trial of the search under ``sweep_dir``, joined with its run's ``metrics.json``.

    ``optimization_results.yaml`` (written by the sweeper) names the best parameters and value; the run dir is the
    trial whose overrides hold those parameters and whose monitored validation metric is that value.
    """
    results_file = sweep_dir / "optimization_results.yaml"
    if not results_file.exists():
        log.warning("no %s: was this multirun an Optuna search?", results_file)
        return None
    results = OmegaConf.to_container(OmegaConf.load(results_file))
    assert isinstance(results, dict)
    if "best_params" not in results:  # a multi-objective study has a Pareto front, not one best trial
        log.warning("%s holds no single best trial (multi-objective?)", results_file)
        return None
    params: dict[str, Any] = results["best_params"]
    value = float(results["best_value"])
    wanted = {f"{name}={val}" for name, val in params.items()}

    runs = []
    for path in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: _job_number(p.parent)):
        metrics = json.loads(path.read_text())
        runs.append((path.parent, metrics))
    best_run = next((run for run, m in runs if wanted <= set(m.get("overrides", []))
                     and _same(m.get("val", {}).get(monitor), value)), None)
    best_metrics = next((m for run, m in runs if run == best_run), {})
    n_jobs = sum(1 for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    completed = [m["val"][monitor] for _, m in runs if _finite(m.get("val", {}).get(monitor))]
    return {
        "monitor": monitor,
        "direction": direction,
        "best_value": value,
        "best_params": params,
        "trial": _job_number(best_run) if best_run else None,
        "run_dir": str(best_run) if best_run else None,
        "overrides": best_metrics.get("overrides"),
        "test": best_metrics.get("test", {}),
        "trials": n_jobs,
        "trials_completed": len(completed),
    }


def summary_line(best: dict[str, Any]) -> str:
    """``best val/rmse 0.9123 (trial 7 of 30) with optimizer.lr=0.0041, model.n_factors=64; test/rmse 0.95``."""
    params = ", ".join(f"{name}={_short(val)}" for name, val in best["best_params"].items())
    where = f" (trial {best['trial']} of {best['trials']})" if best["trial"] is not None else ""
    line = f"best {best['monitor']} {_short(best['best_value'])}{where} with {params}"
    test_key = "test/" + best["monitor"].split("/", 1)[-1]
    if test_key in best["test"]:
        line += f"; {test_key} {_short(best['test'][test_key])}"
    if best["run_dir"]:
        line += f"\n  run dir: {best['run_dir']}"
    return line


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _same(a: Any, b: float) -> bool:
    return _finite(a) and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _job_number(run_dir: Path) -> int:
    return int(run_dir.name) if run_dir.name.isdigit() else -1

