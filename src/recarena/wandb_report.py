"""What a W&B run shows beyond Lightning's metrics (``logger=wandb``), so one W&B project holds the comparison.

- :func:`log_run_report`, called by :func:`after_run` (``after_run.wandb`` of conf/train.yaml) with the run loaded
  back from the dir ``train()`` wrote, before the loggers close: logs to the run of each :class:`~lightning.pytorch.loggers.WandbLogger` ``recommendations`` (a ``wandb.Table``: user_id,
  rank, movie_id, title, year, genres, score of ``report.wandb_users`` fixed users, from ``load_run(RUN_DIR)``, so
  exactly what ``recarena recommend`` says) and ``item_pca`` (``recarena explain``'s PCA plot of the item vectors
  as a ``wandb.Image``, families with item vectors only). Per-epoch metrics and the final val/test metrics need
  nothing here: Lightning's WandbLogger logs every ``self.log`` value, and W&B's summary keeps each key's last
  value, which for ``val/*`` is the best checkpoint's re-validation and for ``test/*`` its test.
- :func:`write_wandb_summary`: the summary states the best checkpoint's metrics outright, whatever was logged
  last. (The whole config reaches every logger through :mod:`recarena.run_config`.)
- :func:`log_sweep_leaderboard`, called by :class:`recarena.report.LeaderboardCallback` at the end of a multirun
  whose config uses the wandb logger: one more W&B run in the sweep's project and group (``job_type=leaderboard``)
  with ``leaderboard`` (a ``wandb.Table``, one row per configuration) and ``leaderboard_metrics`` (the bar plot).

wandb is imported only when a W&B run is there to log to; both respect ``WANDB_MODE=offline`` and
``logger.wandb.offline=true``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from recarena.inference import Run
    from recarena.run import FinishedRun

log = logging.getLogger(__name__)

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
RECOMMENDATION_COLUMNS = ["user_id", "rank", "movie_id", "title", "year", "genres", "score"]


def _wandb_loggers(trainer: Any) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger  # imports no wandb until a run is made

    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def report_users(run: Run, users: int | Sequence[int]) -> list[int]:
    """MovieLens ids of the users to show: ``users`` itself when a list, else the first ``users`` by id among
    those with training ratings (the same users for every family trained on the same split)."""
    if isinstance(users, (int, np.integer)) and not isinstance(users, bool):
        ids = np.unique(run.corpus.user_ids[run.corpus.users[run.split.train]])
        return [int(u) for u in ids[: max(int(users), 0)]]
    return [int(u) for u in users]


def sample_recommendations(run: Run, users: int | Sequence[int], k: int) -> pd.DataFrame:
    """``run.recommend(users=..., k=k)`` of :func:`report_users` with each movie's title, year and genres."""
    recs = run.recommend(users=report_users(run, users), k=k)
    movies = run.items(pd.Index(run.corpus.item_ids).get_indexer(recs["movie_id"]))
    frame = pd.concat([recs.reset_index(drop=True), movies.drop(columns="movie_id")], axis=1)
    return frame[RECOMMENDATION_COLUMNS]


def _table(frame: pd.DataFrame) -> Any:
    """A ``wandb.Table`` of a frame; missing values (a movie without a year, NaN) become nulls."""
    import wandb

    return wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None))


def has_wandb_logger(trainer: Any) -> bool:
    """Whether the trainer logs to W&B (then :func:`log_run_report` has somewhere to log)."""
    return bool(_wandb_loggers(trainer))


def write_wandb_summary(trainer: Any, result: dict[str, Any]) -> None:
    """Each W&B run's summary holds what metrics.json holds: the best checkpoint's validation metrics (so the
    monitored one is its best value over the epochs, whichever epoch was logged last), its test metrics and
    ``best_epoch``. A W&B sweep's ``metric.name: val/ndcg@10`` and a dashboard sorted by it read exactly these."""
    for logger in _wandb_loggers(trainer):
        logger.experiment.define_metric("val/*", step_metric="epoch")  # validation curves over epochs
        logger.experiment.summary.update({**result["val"], **result["test"], "best_epoch": result["best_epoch"]})


def after_run(finished: FinishedRun) -> None:
    """``after_run.wandb`` of conf/train.yaml (nothing without a W&B logger): the summary
    (:func:`write_wandb_summary`), then the report (:func:`log_run_report`) of the run loaded back from its dir."""
    if not has_wandb_logger(finished.trainer):
        return
    write_wandb_summary(finished.trainer, finished.result)
    if finished.load is not None:
        log_run_report(finished.cfg, finished.trainer, finished.load())


def log_run_report(cfg: DictConfig, trainer: Any, run: Run) -> None:
    """Log ``recommendations`` and ``item_pca`` of ``run`` (loaded from the run dir ``train()`` just wrote) to each
    W&B logger's run (nothing without one); a failure is logged and never fails the finished run."""
    loggers = _wandb_loggers(trainer)
    if not loggers:
        return
    from recarena.errors import RunError
    from recarena.inspection import explain

    settings = cfg.get("report") or {}
    output_dir = run.path
    import wandb

    entries: dict[str, Any] = {}
    try:
        recs = sample_recommendations(run, settings.get("wandb_users", 5), int(settings.get("wandb_k", 10)))
        entries["recommendations"] = _table(recs)
        if "item_vectors" in type(run.model).provides:  # families with item vectors (not popularity, EASE, ItemKNN)
            pca = explain(run, min_ratings=int(settings.get("pca_min_ratings", 20)))["pca"]
            entries["item_pca"] = wandb.Image(str(pca), caption=f"PCA of the item vectors of model={run.family}")
    except RunError as err:  # e.g. fewer than three movies with enough ratings for a PCA
        log.warning("W&B report of %s incomplete: %s", output_dir, err)
    except Exception:  # a report bug must not turn a finished run into a failed one
        log.exception("W&B report of %s failed", output_dir)
    for logger in loggers:
        if entries:
            logger.experiment.log(entries)


def uses_wandb(config: DictConfig) -> str | None:
    """The key of the config's W&B logger entry (``logger.<key>``), or None."""
    loggers = OmegaConf.select(config, "logger") or {}
    return next((key for key, entry in loggers.items() if entry and entry.get("_target_") == WANDB_LOGGER), None)


def _sweep_group(config: DictConfig) -> str | None:
    """The group the sweep's jobs logged to: ``group=`` when given, else the sweep's own name (what
    ``${recarena.sweep_group:}`` gave each job)."""
    from recarena.resolvers import sweep_group_name

    group = OmegaConf.select(config, "group", default=None, throw_on_resolution_failure=False)
    return group or sweep_group_name(OmegaConf.select(config, "hydra.sweep.dir"))


def log_sweep_leaderboard(config: DictConfig, sweep_dir: Path, board: pd.DataFrame) -> None:
    """Start a W&B run in the sweep's project and group, log the leaderboard table (and the metric bars PNG when
    ``leaderboard.html`` drew it), finish it. Its local files go under ``SWEEP_DIR/wandb``."""
    key = uses_wandb(config)
    if key is None:
        return
    import wandb

    entry = config.logger[key]
    offline = bool(OmegaConf.select(entry, "offline", default=False)) or os.environ.get("WANDB_MODE") == "offline"
    run = wandb.init(
        project=OmegaConf.select(entry, "project", default="recarena"),
        group=_sweep_group(config),
        job_type="leaderboard", name="leaderboard", dir=str(sweep_dir), mode="offline" if offline else None,
        config={"sweep_dir": str(sweep_dir), "primary": board.attrs.get("primary")},
    )
    try:
        entries: dict[str, Any] = {"leaderboard": _table(board)}
        bars = sweep_dir / "leaderboard_metrics.png"
        if bars.is_file():
            entries["leaderboard_metrics"] = wandb.Image(str(bars))
        run.log(entries)
    finally:
        run.finish()
