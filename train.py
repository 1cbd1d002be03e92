"""Train and test one recommender configuration: ``python train.py model=mf loss=mse data=ml-100k``.

Thin on purpose: everything happens in :func:`recarena.run.train` (:func:`recarena.run.train_job` for each job of
a multirun, which records a failed job and lets the sweep go on; the command then exits 1). Returns the monitored validation metric so
Hydra's Optuna sweeper can optimise it (``-m hparams_search=mf_optuna``); a trial whose metric is missing (None) or
NaN (a diverged run) is recorded by the sweeper as a failed trial and the search goes on.
"""

import sys

import hydra
from omegaconf import DictConfig

import recarena  # noqa: F401  (registers the ${recarena.*:...} resolvers of conf/ before Hydra composes)
from recarena.cli_errors import exit_on_user_error
from recarena.launchers import check_launcher_plugin
from recarena.startup import check_overrides, help_text


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from recarena.run import train, train_job  # imported here so `--help` and config errors answer fast

    if HydraConfig.get().mode == RunMode.MULTIRUN:  # one failed job must not stop the sweep
        result = train_job(cfg)
    else:
        with exit_on_user_error():
            result = train(cfg)
    return result["val"].get(str(cfg.eval.monitor)) if result else None


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(help_text())
        sys.exit(0)
    with exit_on_user_error():  # one line and exit code 2, before Hydra runs anything
        check_launcher_plugin(sys.argv[1:])
        check_overrides(sys.argv[1:])
    main()
    # The leaderboard callback (recarena.report, loaded by Hydra when a run starts) lists a multirun's failed jobs: every
    # job ran and the reports are written, but the sweep failed.
    board = sys.modules.get("recarena.report")
    if board is not None and board.LeaderboardCallback.failed_jobs:
        sys.exit(1)
