"""``recarena train [overrides]`` (and ``python train.py [overrides]`` in a source checkout): train and test one
configuration, or a sweep with ``-m``, from any directory; the configs are the package's
(:data:`recarena.paths.CONF_DIR`).

Thin on purpose: everything happens in :func:`recarena.run.train` (:func:`recarena.run.train_job` for each job of
a multirun, which records a failed job and lets the sweep go on; the command then exits 1). The Hydra task returns
the monitored validation metric so Hydra's Optuna sweeper can optimise it (``-m hparams_search=mf_optuna``); a trial
whose metric is missing (None) or NaN (a diverged run) is recorded by the sweeper as a failed trial and the search
goes on. ``--help`` and a bad override or launcher answer before torch is imported (one line, exit code 2).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

import hydra
from omegaconf import DictConfig

from recarena.cli_errors import exit_on_user_error
from recarena.launchers import check_launcher_plugin
from recarena.paths import CONF_DIR
from recarena.resolvers import register_resolvers
from recarena.startup import check_overrides, help_text


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _task(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from recarena.run import train, train_job  # imported here so `--help` and config errors answer fast

    # torch, Lightning and their imports leave ~10^6 long-lived objects that every full garbage collection walks
    # again (~1 s of pauses in an ML-100K run) and that interpreter exit collects one by one (1.2-1.7 s). Moved to
    # the permanent generation, they are never scanned: nothing created by the run itself is affected.
    gc.freeze()
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # one failed job must not stop the sweep
        result = train_job(cfg)
    else:
        with exit_on_user_error():
            result = train(cfg)
    return result["val"].get(str(cfg.eval.monitor)) if result else None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if {"--help", "-h"} & set(args):
        print(help_text())
        return 0
    with exit_on_user_error():  # one line and exit code 2, before Hydra runs anything
        check_launcher_plugin(args)
        check_overrides(args)
    register_resolvers()  # ${recarena.*:...} of conf/, before Hydra composes
    sys.argv = [sys.argv[0], *args]  # Hydra reads its command line from sys.argv
    _task()
    # The leaderboard callback (recarena.report, loaded by Hydra when a run starts) lists a multirun's failed jobs:
    # every job ran and the reports are written, but the sweep failed.
    board = sys.modules.get("recarena.report")
    return 1 if board is not None and board.LeaderboardCallback.failed_jobs else 0
