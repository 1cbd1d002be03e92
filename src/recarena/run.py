"""``train(cfg)``: check the config, seed, build data + model + trainer, fit, test the best checkpoint, and write
``metrics.json`` into the run dir. ``train.py`` is a thin ``@hydra.main`` wrapper around it; tests call it with
configs composed through Hydra's compose API.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from recarena.atomic import write_json
from recarena.checkpoint_io import AtomicCheckpointIO
from recarena.checks import check_config, config_warnings, option_name
from recarena.data.datamodule import MovieLensDataModule
from recarena.display import print_metrics, print_stats
from recarena.errors import USER_ERRORS, ConfigError
from recarena.random_state import RandomState
from recarena.report import config_key
from recarena.run_config import run_hyperparameters
from recarena.rundir import ERROR_FILE, clear_run_dir, is_finished, same_config, save_run_data
from recarena.threads import AUTO, job_threads, use_threads
from recarena.timing import EpochTimer
from recarena.wandb_report import has_wandb_logger, log_run_report, write_wandb_summary

log = logging.getLogger(__name__)

# Lightning warnings that do not apply to recarena, silenced so that real ones stand out:
# - our loaders cut batches from in-memory tensors in the main process on purpose (workers would copy them);
# - evaluation metrics are reduced across processes by torchmetrics already, not by self.log(sync_dist=True);
# - the training loss is logged per epoch, so a short epoch below log_every_n_steps loses nothing;
# - a deprecation inside Lightning's own pytree helper (Lightning 2.6 on torch >= 2.10).
for _message in (
    ".*does not have many workers.*",
    ".*sync_dist=True.*",
    ".*smaller than the logging interval.*",
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*litlogger.*",
    # families fitted by exact sweeps (iALS, loss=als) have no optimiser on purpose.
    ".*configure_optimizers. returned .None.*",
):
    warnings.filterwarnings("ignore", message=_message)
# Lightning has its own console handler; without this Hydra's root handler prints each of its lines twice.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).propagate = False

METRICS_FORMAT_VERSION = 1


def build_datamodule(cfg: DictConfig, view: str, positive_threshold: float | None = None) -> MovieLensDataModule:
    return MovieLensDataModule(
        data=cfg.data,
        split=cfg.split,
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        view=view,
        user_chunk=int(cfg.eval.user_chunk),
        minibatches_per_step=int(cfg.minibatches_per_step),
        positive_threshold=positive_threshold,
        view_options=OmegaConf.to_container(cfg.model, resolve=True),
        max_eval_users=cfg.eval.get("max_users"),
        test_known=str(cfg.eval.get("test_known", "train")),
    )


def build_model(cfg: DictConfig, dm: MovieLensDataModule) -> L.LightningModule:
    loss = instantiate(cfg.loss)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") and cfg.scheduler.get("_target_") else None
    return instantiate(
        cfg.model,
        schema=dm.schema,
        loss=loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        ks=list(cfg.eval.ks),
        relevance_threshold=cfg.eval.relevance_threshold,
        head_share=cfg.eval.head_share,
        _convert_="all",
    )


def build_trainer(cfg: DictConfig, output_dir: Path, timer: EpochTimer) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks += [timer, RandomState()]  # RandomState: a resumed run draws what the straight run would have
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=output_dir,
                       plugins=[AtomicCheckpointIO()])  # fmt: skip


def train(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns the content of ``metrics.json``."""
    check_config(cfg)  # before any data work: a bad combination must not cost a download
    if rank_zero_only.rank == 0:
        for line in config_warnings(cfg):
            log.warning(line)
    threads = job_threads(cfg.get("threads", AUTO), _hydra_launcher())
    use_threads(threads)
    output_dir = Path(output_dir or _hydra_output_dir() or tempfile.mkdtemp(prefix="recarena-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    if (finished := _claim_run_dir(cfg, output_dir)) is not None:
        return finished
    started = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    loss = instantiate(cfg.loss)
    dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
    dm.prepare_data()
    dm.setup("fit")
    main_process = rank_zero_only.rank == 0  # under DDP every process runs train(); one reports
    if cfg.get("verbose", True) and main_process:
        print_stats(cfg.data.name, cfg.split.name, dm.stats)

    model = build_model(cfg, dm)
    timer = EpochTimer()
    trainer = build_trainer(cfg, output_dir, timer)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    _log_run_config(cfg, trainer, model, dm, output_dir, threads)

    fit_started = time.perf_counter()
    if model.trainable:
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    else:
        trainer.validate(model, datamodule=dm, verbose=False)
    fit_seconds = time.perf_counter() - fit_started
    best_path = _best_checkpoint(trainer)
    if model.trainable and best_path:
        # callback_metrics hold the last epoch's validation; report the best checkpoint's, like the test. Not
        # logged: the curves (CSV, W&B) show each epoch once; the summary is written from metrics.json.
        with _loggers_off(trainer):
            trainer.validate(model, datamodule=dm, ckpt_path=best_path, verbose=False, weights_only=False)
    val_metrics = _metrics_with_prefix(trainer, "val/")

    test_metrics: dict[str, float] = {}
    eval_started = time.perf_counter()
    refit = refits_for_test(cfg, model)
    if cfg.get("test", True) and refit:
        test_metrics = _refit_and_test(cfg, dm, output_dir, best_path)
    elif cfg.get("test", True):
        ckpt = best_path if (model.trainable and best_path) else None
        trainer.test(model, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=False)
        test_metrics = _metrics_with_prefix(trainer, "test/")
    eval_seconds = time.perf_counter() - eval_started

    result = {
        "format_version": METRICS_FORMAT_VERSION,
        "model": option_name(cfg, "model"),
        "loss": option_name(cfg, "loss"),
        "data": str(cfg.data.name),
        "split": str(cfg.split.name),
        "seed": int(cfg.seed),
        "threads": threads,
        "overrides": _task_overrides(),
        "config_key": config_key(_task_overrides()),
        "monitor": str(cfg.eval.monitor),
        # What the model could know at test time (eval.test_known) and, for families whose users are learnt ids
        # under train+val, the epochs of the retraining on train + validation that was tested.
        "test_known": str(cfg.eval.get("test_known", "train")),
        "test_refit_epochs": _checkpoint_epochs(best_path) if refit and best_path else None,
        "monitor_mode": str(cfg.eval.monitor_mode),
        "val": val_metrics,
        "test": test_metrics,
        # 1-based epoch of the best checkpoint (the model validated and tested); None for fitted families.
        "best_epoch": _checkpoint_epochs(best_path) if model.trainable and best_path else None,
        "epochs": int(trainer.current_epoch) if model.trainable else 0,
        "fit_seconds": round(fit_seconds, 3),
        "train_seconds": round(timer.train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "train_samples_per_s": round(timer.samples_per_second(dm.n_train), 1),
        "best_checkpoint": str(best_path) if best_path else None,
        "split_fingerprint": dm.split.fingerprint,
        # Users scored / users with a held-out rating: fewer when eval.max_users samples them.
        "eval_users": {part: [data.n_users_eval, data.n_users_all] for part, data in
                       (("val", dm.val_data), ("test", dm.test_data))},
        "dataset": dm.stats,
        "versions": _versions(),
        "git_commit": _git_commit(),
    }
    if main_process and cfg.get("save_run_data", True):  # what load_run needs beside the checkpoint (recarena.rundir)
        save_run_data(output_dir, dm.corpus, dm.split, dm.schema, result["model"], result["loss"])
        _use_saved_run(cfg, trainer, output_dir, type(model))
    write_wandb_summary(trainer, result)
    _finish_loggers(trainer)
    if main_process:
        write_json(output_dir / "metrics.json", result)
        if cfg.get("verbose", True):
            print_metrics(result)
            print(f"run dir: {output_dir}")
        _point_latest(output_dir)
    return result


def _log_run_config(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, dm: MovieLensDataModule,
                    output_dir: Path, threads: int) -> None:  # fmt: skip
    """Every logger gets the whole config (:mod:`recarena.run_config`), to filter and group runs by."""
    choices = OmegaConf.to_container(hydra.runtime.choices) if (hydra := _hydra()) else {}
    params = run_hyperparameters(cfg, choices, model, dm.split.fingerprint, output_dir, threads)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def _point_latest(output_dir: Path) -> None:
    """``outputs/latest`` -> the newest finished single run under ``outputs/`` (the default run dirs), replaced
    atomically; runs elsewhere and the jobs of a multirun leave it alone."""
    outputs = Path.cwd() / "outputs"
    if _hydra() is None or _in_multirun() or not output_dir.resolve().is_relative_to(outputs.resolve()):
        return
    link = outputs / "latest"
    tmp = outputs / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(output_dir.resolve().relative_to(outputs.resolve()))
    os.replace(tmp, link)


def train_job(cfg: DictConfig) -> dict[str, Any] | None:
    """One job of a multirun: :func:`train`, except that a failure (a user error or a bug) does not end the sweep.
    The job's one-line error goes to stderr and to ``error.json`` in its run dir (the sweep's leaderboard lists it
    as a failed row), and None is returned (a failed trial for Optuna); the sweep then exits 1 once every job ran
    and the reports were written (:class:`recarena.report.LeaderboardCallback`)."""
    try:
        return train(cfg)
    except KeyboardInterrupt:
        raise
    except Exception as error:
        line = _error_line(error)
        if not isinstance(error, USER_ERRORS):
            log.exception("job failed")
        print(f"error: {line}", file=sys.stderr)
        _write_error(cfg, line)
        return None


def _error_line(error: BaseException) -> str:
    """One line for a failed job: a user error's own message; for anything else its type and first line, down to
    the root cause (Hydra wraps a constructor's error in an InstantiationException)."""
    if isinstance(error, USER_ERRORS):
        return str(error).strip().splitlines()[0]
    while error.__cause__ is not None:
        error = error.__cause__
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}".rstrip(": ")


def _write_error(cfg: DictConfig, line: str) -> None:
    output_dir = Path(_hydra_output_dir() or ".")
    if is_finished(output_dir):  # a refused dir: its finished run stays as it was
        return
    choices = hydra.runtime.choices if (hydra := _hydra()) else {}
    overrides = _task_overrides()
    record = {"format_version": METRICS_FORMAT_VERSION, "status": "failed", "error": line,
              **{group: choices.get(group) or "" for group in ("model", "loss", "data", "split")},
              "seed": cfg.get("seed"), "overrides": overrides, "config_key": config_key(overrides)}  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / ERROR_FILE, record)


def _claim_run_dir(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """A run dir holds one run. A finished run (``metrics.json``) is refused unless ``overwrite=true``, except in a
    multirun whose job there finished with the same resolved config: the rerun sweep skips it and returns its
    metrics (resuming a sweep). A run that resumes from a checkpoint (``ckpt_path``) continues the dir's run;
    otherwise an earlier run's artefacts are removed, so that nothing of two runs is mixed."""
    multirun = _in_multirun()
    # A DDP worker re-runs train() while rank 0 trains: the dir is rank 0's. A resumed (or continued) run's
    # checkpoints and files are its own.
    if rank_zero_only.rank != 0 or cfg.get("ckpt_path"):
        return None
    if is_finished(output_dir) and not cfg.get("overwrite", False):
        if multirun and same_config(output_dir, OmegaConf.to_container(cfg, resolve=True)):
            log.info("%s finished with this config already: skipped", output_dir)
            return json.loads((output_dir / "metrics.json").read_text())
        key, which = ("hydra.sweep.dir", " of another config") if multirun else ("hydra.run.dir", "")
        raise ConfigError(
            f"{key}: {output_dir} holds a finished run (metrics.json){which}: choose another {key}, or add "
            "overwrite=true to replace it."
        )
    clear_run_dir(output_dir)
    return None


def refits_for_test(cfg: DictConfig, model: L.LightningModule) -> bool:
    """Whether the test needs a retrained model: ``eval.test_known=train+val`` and a family whose users are ids
    learnt by gradient (``test_inputs == "refit"``: it cannot read validation ratings any other way)."""
    return str(cfg.eval.get("test_known", "train")) == "train+val" and model.trainable and model.test_inputs == "refit"


def _refit_and_test(cfg: DictConfig, dm: MovieLensDataModule, output_dir: Path, best_path: str | None) -> dict[str, float]:
    """Retrain the configuration on train + validation for the epochs of the validation-best checkpoint, with no
    validation, early stopping or checkpoint selection, and test it. Its weights are saved as
    ``checkpoints/refit.ckpt`` (``best.ckpt`` stays the model trained on the training ratings)."""
    if not best_path:
        raise ConfigError("eval.test_known=train+val retrains for the best checkpoint's epochs: keep "
                          "callbacks.model_checkpoint (it is off).")  # fmt: skip
    refit_cfg = copy.deepcopy(cfg)
    with open_dict(refit_cfg):
        refit_cfg.trainer.max_epochs = _checkpoint_epochs(best_path)
        refit_cfg.trainer.limit_val_batches = 0
        refit_cfg.trainer.enable_checkpointing = False
        refit_cfg.callbacks.early_stopping = None
        refit_cfg.callbacks.model_checkpoint = None
        refit_cfg.logger = None
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    loss = instantiate(refit_cfg.loss)
    refit_dm = build_datamodule(refit_cfg, loss.view, loss.positive_threshold)
    refit_dm.use(dm.corpus, dm.refit_split())
    model = build_model(refit_cfg, refit_dm)
    trainer = build_trainer(refit_cfg, output_dir, EpochTimer())
    trainer.fit(model, datamodule=refit_dm)
    trainer.save_checkpoint(output_dir / "checkpoints" / "refit.ckpt")
    trainer.test(model, datamodule=refit_dm, verbose=False)
    return _metrics_with_prefix(trainer, "test/")


@contextlib.contextmanager
def _loggers_off(trainer: L.Trainer) -> Iterator[None]:
    loggers = trainer.loggers
    trainer.loggers = []
    try:
        yield
    finally:
        trainer.loggers = loggers


def _checkpoint_epochs(path: str) -> int:
    """Epochs trained up to a Lightning checkpoint (it records the 0-based epoch it was saved in)."""
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["epoch"]) + 1


def _use_saved_run(cfg: DictConfig, trainer: L.Trainer, output_dir: Path, family: type) -> None:
    """What the end of training derives from the run dir it wrote: the exported vectors `recarena recommend`
    answers from (``export_embeddings``) and, with logger=wandb, the sample recommendations and item PCA. The run
    is loaded once (7.7 s at 25M ratings), and only when one of them needs it; a failure never fails the run."""
    from recarena.inspection import export_for_serving, exports_embeddings

    export = bool(cfg.get("export_embeddings", True)) and exports_embeddings(family)
    report = has_wandb_logger(trainer)
    if not (export or report):
        return
    from recarena.inference import load_run

    try:
        run = load_run(output_dir)
    except Exception:
        log.exception("could not load %s back for its export and report", output_dir)
        return
    if export:
        export_for_serving(run)
    if report:
        log_run_report(cfg, trainer, run)


def _finish_loggers(trainer: L.Trainer) -> None:
    """Close each logger's run: a W&B run left open would swallow the next job of a multirun."""
    for logger in trainer.loggers:
        logger.finalize("success")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()


def _metrics_with_prefix(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(prefix)}


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    return getattr(callback, "best_model_path", None) or None


def _hydra() -> DictConfig | None:
    """The Hydra config of the job this is, or None outside Hydra (tests, ``train(cfg)`` called from Python)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _in_multirun() -> bool:
    """Whether this is a job of a Hydra multirun (a sweep), where a run dir's finished run may be skipped."""
    return (hydra := _hydra()) is not None and hydra.mode == RunMode.MULTIRUN


def _task_overrides() -> list[str]:
    return list(hydra.overrides.task) if (hydra := _hydra()) else []


def _hydra_output_dir() -> str | None:
    return hydra.runtime.output_dir if (hydra := _hydra()) else None


def _hydra_launcher() -> dict[str, Any]:
    """The launcher's config (empty outside Hydra): how many jobs share the cores (:mod:`recarena.threads`)."""
    return OmegaConf.to_container(hydra.launcher, resolve=True) if (hydra := _hydra()) else {}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("recarena", "torch", "lightning", "hydra-core", "torchmetrics", "numpy", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    out["cuda"] = torch.version.cuda or "none"
    return out


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
