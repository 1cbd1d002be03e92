"""``train(cfg)``: check the config, seed, build data + model + trainer, fit, test the best checkpoint, and write
``metrics.json`` into the run dir. ``train.py`` is a thin ``@hydra.main`` wrapper around it; tests call it with
configs composed through Hydra's compose API.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from recarena.build import build_datamodule, build_model, build_trainer
from recarena.checks import check_config, config_warnings, option_name
from recarena.data.datamodule import MovieLensDataModule
from recarena.display import print_metrics, print_stats
from recarena.errors import USER_ERRORS, ConfigError, one_line
from recarena.inference import Run, load_run
from recarena.process_layout import processes_per_node
from recarena.record import ERROR_FILE, METRICS_FILE, METRICS_FORMAT_VERSION, config_key, is_finished
from recarena.run_config import run_hyperparameters
from recarena.rundir import SHARED_RUN_DATA, clear_run_dir, same_config, save_run_data
from recarena.threads import AUTO, job_threads, use_threads
from recarena.timing import EpochTimer
from recarena.validation_record import ValidationRecord

log = logging.getLogger(__name__)

# Lightning has its own console handler; without this Hydra's root handler prints each of its lines twice.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).propagate = False


@dataclass(frozen=True)
class Job:
    """What Hydra knows about a run beside its config: under ``train.py`` Hydra's global job config, for a config
    from :func:`recarena.build.compose` the config's own ``hydra`` node; nothing for a bare config."""

    output_dir: str | None = None
    overrides: tuple[str, ...] = ()
    choices: dict[str, Any] = field(default_factory=dict)  # the option chosen in each config group
    launcher: dict[str, Any] = field(default_factory=dict)  # how many jobs share the cores (recarena.threads)
    multirun: bool = False
    from_hydra: bool = False

    @classmethod
    def of(cls, hydra: DictConfig | None) -> Job:
        if hydra is None:
            return cls()
        return cls(
            output_dir=hydra.runtime.output_dir,
            overrides=tuple(hydra.overrides.task),
            choices=OmegaConf.to_container(hydra.runtime.choices),
            launcher=OmegaConf.to_container(hydra.launcher, resolve=True) if hydra.get("launcher") else {},
            multirun=hydra.mode == RunMode.MULTIRUN,
            from_hydra=True,
        )


def split_job(cfg: DictConfig) -> tuple[DictConfig, Job]:
    """The run's config without a ``hydra`` node, and its :class:`Job` (from that node, else from Hydra's global
    job config when ``train.py`` runs, else empty)."""
    if "hydra" not in cfg:
        return cfg, Job.of(_hydra())
    job = Job.of(cfg.hydra)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, job


@dataclass
class FinishedRun:
    """What each ``after_run`` step of the config gets once the run dir is written, before the loggers close."""

    cfg: DictConfig
    trainer: L.Trainer
    model: L.LightningModule
    result: dict[str, Any]  # metrics.json
    path: Path
    load: Callable[[], Run] | None  # the run loaded back from its dir (once, on first call); None without run data


def train(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns the content of ``metrics.json``.

    ``cfg`` is the config ``train.py`` composes, or :func:`recarena.build.compose`'s (whose ``hydra`` node names
    the run dir and the overrides). The steps: check, claim the run dir, build, fit, validate the best checkpoint,
    test it, record, save and run the config's ``after_run`` steps.
    """
    cfg, job = split_job(cfg)
    check_config(cfg)  # before any data work: a bad combination must not cost a download
    main_process = rank_zero_only.rank == 0  # under DDP every process runs train(); one reports
    if main_process:
        for line in config_warnings(cfg):
            log.warning(line)
    threads = job_threads(cfg.get("threads", AUTO), job.launcher, _local_processes(cfg))
    use_threads(threads)
    output_dir = Path(output_dir or job.output_dir or tempfile.mkdtemp(prefix="recarena-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    if (finished := _claim_run_dir(cfg, output_dir, job.multirun)) is not None:
        return finished
    started = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm, model, trainer, timer = _build(cfg, output_dir, job, threads, verbose=main_process)

    fit_started = time.perf_counter()
    _fit(cfg, trainer, model, dm)
    fit_seconds = time.perf_counter() - fit_started
    best_path = _best_checkpoint(trainer) if model.trainable else None
    val_metrics = _validate_best(trainer, model, dm, best_path)
    eval_started = time.perf_counter()
    test_metrics, refit_epochs = _test(cfg, trainer, model, dm, output_dir, best_path)
    seconds = {"fit_seconds": fit_seconds, "train_seconds": timer.train_seconds,
               "eval_seconds": time.perf_counter() - eval_started, "wall_seconds": time.perf_counter() - started}
    result = _record(cfg, job, threads, dm, trainer, model, val_metrics, test_metrics, best_path, refit_epochs)
    result |= {key: round(value, 3) for key, value in seconds.items()}
    result["train_samples_per_s"] = round(timer.samples_per_second(dm.n_train), 1)
    if main_process:
        _save(cfg, FinishedRun(cfg, trainer, model, result, output_dir, load=None), dm, job)
    _finish_loggers(trainer)
    return result


def _local_processes(cfg: DictConfig) -> int:
    """Processes the trainer runs on this machine (DDP's, sharing its cores); 1 where the config cannot say."""
    try:
        return processes_per_node(cfg.trainer.get("strategy"), cfg.trainer.get("devices"))
    except ValueError:
        return 1


def _build(cfg: DictConfig, output_dir: Path, job: Job, threads: int,
           verbose: bool) -> tuple[MovieLensDataModule, L.LightningModule, L.Trainer, EpochTimer]:  # fmt: skip
    """The datamodule (its split made or read from the cache), the family and the trainer; the resolved config
    goes to ``config.yaml`` and, whole, to every logger."""
    loss = instantiate(cfg.loss)
    dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
    dm.prepare_data()
    dm.setup("fit")
    if cfg.get("verbose", True) and verbose:
        print_stats(cfg.data.name, cfg.split.name, dm.stats)
    model = build_model(cfg, dm)
    timer = EpochTimer()
    trainer = build_trainer(cfg, output_dir, timer)
    if rank_zero_only.rank == 0:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    _log_run_config(cfg, job, trainer, model, dm, output_dir, threads)
    return dm, model, trainer, timer


def _fit(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, dm: MovieLensDataModule) -> None:
    """Train a gradient family (resuming from ``ckpt_path`` when given); a fitted family (popularity, EASE,
    ItemKNN) fits in ``setup`` and is validated once."""
    if model.trainable:
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        except RuntimeError as err:  # restoring ckpt_path into a model of other sizes or another family
            if cfg.get("ckpt_path") and "loading state_dict" in str(err):
                raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not fit this model ({one_line(err)}): resume with "
                                  "the overrides of the run that wrote it") from None  # fmt: skip
            raise
    else:
        trainer.validate(model, datamodule=dm, verbose=False)


def _validate_best(trainer: L.Trainer, model: L.LightningModule, dm: MovieLensDataModule,
                   best_path: str | None) -> dict[str, float]:  # fmt: skip
    """The validation metrics of the model that is tested: after training, ``callback_metrics`` hold the last
    epoch's, so the best checkpoint's epoch is read from the :class:`ValidationRecord`, or, when the record lacks
    it, that checkpoint is validated again. Not logged: the curves (CSV, W&B) show each epoch once; the summary is
    written from metrics.json."""
    if not best_path:
        return _metrics_with_prefix(trainer, "val/")
    record = next((c for c in trainer.callbacks if isinstance(c, ValidationRecord)), None)
    recorded = record.epochs.get(_checkpoint_epochs(best_path) - 1) if record is not None else None
    if recorded:
        return dict(recorded)
    with _loggers_off(trainer):
        trainer.validate(model, datamodule=dm, ckpt_path=best_path, verbose=False, weights_only=False)
    return _metrics_with_prefix(trainer, "val/")


def _test(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, dm: MovieLensDataModule,
          output_dir: Path, best_path: str | None) -> tuple[dict[str, float], int | None]:  # fmt: skip
    """The test metrics of the best checkpoint (nothing with ``test=false``), and the epochs of the retraining on
    train + validation when ``eval.test_known=train+val`` needs one (:func:`refits_for_test`), else None."""
    if not cfg.get("test", True):
        return {}, None
    if refits_for_test(cfg, model):
        return _refit_and_test(cfg, dm, output_dir, best_path), _checkpoint_epochs(best_path) if best_path else None
    trainer.test(model, datamodule=dm, ckpt_path=best_path, verbose=False, weights_only=False)
    return _metrics_with_prefix(trainer, "test/"), None


def _record(cfg: DictConfig, job: Job, threads: int, dm: MovieLensDataModule, trainer: L.Trainer,
            model: L.LightningModule, val: dict[str, float], test: dict[str, float], best_path: str | None,
            refit_epochs: int | None) -> dict[str, Any]:  # fmt: skip
    """``metrics.json`` (the run record, :mod:`recarena.record`) but for its timings."""
    return {
        "format_version": METRICS_FORMAT_VERSION,
        "model": option_name(cfg, "model"),
        "loss": option_name(cfg, "loss"),
        "data": str(cfg.data.name),
        "split": str(cfg.split.name),
        "seed": int(cfg.seed),
        "threads": threads,
        "overrides": list(job.overrides),
        "config_key": config_key(job.overrides),
        "monitor": str(cfg.eval.monitor),
        # What the model could know at test time (eval.test_known) and, for families whose users are learnt ids
        # under train+val, the epochs of the retraining on train + validation that was tested.
        "test_known": str(cfg.eval.get("test_known", "train")),
        "test_refit_epochs": refit_epochs,
        "monitor_mode": str(cfg.eval.monitor_mode),
        "val": val,
        "test": test,
        # 1-based epoch of the best checkpoint (the model validated and tested); None for fitted families.
        "best_epoch": _checkpoint_epochs(best_path) if best_path else None,
        "epochs": int(trainer.current_epoch) if model.trainable else 0,
        "best_checkpoint": str(best_path) if best_path else None,
        # Item features computed from held-out ratings (the tag genome under a time split, allowed explicitly).
        "future_item_features": bool(getattr(model, "future_item_features", False)),
        "split_fingerprint": dm.split.fingerprint,
        # Users scored / users with a held-out rating: fewer when eval.max_users samples them.
        "eval_users": {part: [data.n_users_eval, data.n_users_all] for part, data in
                       (("val", dm.val_data), ("test", dm.test_data))},
        "dataset": dm.stats,
        "versions": _versions(),
        "git_commit": _git_commit(),
    }


def _save(cfg: DictConfig, finished: FinishedRun, dm: MovieLensDataModule, job: Job) -> None:
    """The run data ``load_run`` needs beside the checkpoint (:mod:`recarena.rundir`), the ``after_run`` steps,
    then ``metrics.json``, last: from then on the run dir reads as finished."""
    output_dir, result = finished.path, finished.result
    if cfg.get("save_run_data", True):
        shared = output_dir.parent / SHARED_RUN_DATA if job.multirun and cfg.get("share_run_data", True) else None
        save_run_data(output_dir, dm.corpus, dm.split, dm.schema, result["model"], result["loss"], shared)
        finished.load = functools.cache(lambda: load_run(output_dir))
    _after_run(cfg, finished)
    write_json(output_dir / METRICS_FILE, result)
    if cfg.get("verbose", True):
        print_metrics(result)
        print(f"run dir: {output_dir}")
    _point_latest(output_dir, job)


def _after_run(cfg: DictConfig, finished: FinishedRun) -> None:
    """Each step of the config's ``after_run`` (``export``: the vectors ``recarena recommend`` serves; ``wandb``:
    the W&B summary and report), called with the finished run; a failing step is logged, never fails the run."""
    for name, step in (cfg.get("after_run") or {}).items():
        if step is None:
            continue
        try:
            instantiate(step)(finished)
        except Exception:
            log.exception("after_run.%s failed on %s", name, finished.path)


def _log_run_config(cfg: DictConfig, job: Job, trainer: L.Trainer, model: L.LightningModule,
                    dm: MovieLensDataModule, output_dir: Path, threads: int) -> None:  # fmt: skip
    """Every logger gets the whole config (:mod:`recarena.run_config`), to filter and group runs by."""
    params = run_hyperparameters(cfg, job.choices, model, dm.split.fingerprint, output_dir, threads)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def _point_latest(output_dir: Path, job: Job) -> None:
    """``outputs/latest`` -> the newest finished single run under ``outputs/`` (the default run dirs), replaced
    atomically; runs elsewhere and the jobs of a multirun leave it alone."""
    outputs = Path.cwd() / "outputs"
    if not job.from_hydra or job.multirun or not output_dir.resolve().is_relative_to(outputs.resolve()):
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
        _write_error(*split_job(cfg), line)
        return None


def _error_line(error: BaseException) -> str:
    """One line for a failed job: a user error's own message; for anything else its type and first line, down to
    the root cause (Hydra wraps a constructor's error in an InstantiationException)."""
    if isinstance(error, USER_ERRORS):
        return str(error).strip().splitlines()[0]
    while error.__cause__ is not None:
        error = error.__cause__
    return one_line(error)


def _write_error(cfg: DictConfig, job: Job, line: str) -> None:
    output_dir = Path(job.output_dir or ".")
    if is_finished(output_dir):  # a refused dir: its finished run stays as it was
        return
    overrides = list(job.overrides)
    record = {"format_version": METRICS_FORMAT_VERSION, "status": "failed", "error": line,
              **{group: job.choices.get(group) or "" for group in ("model", "loss", "data", "split")},
              "seed": cfg.get("seed"), "overrides": overrides, "config_key": config_key(overrides)}  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / ERROR_FILE, record)


def _claim_run_dir(cfg: DictConfig, output_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """A run dir holds one run. A finished run (``metrics.json``) is refused unless ``overwrite=true``, except in a
    multirun whose job there finished with the same resolved config: the rerun sweep skips it and returns its
    metrics (resuming a sweep). A run that resumes from a checkpoint (``ckpt_path``) continues the dir's run;
    otherwise an earlier run's artefacts are removed, so that nothing of two runs is mixed."""
    # A resumed (or continued) run's checkpoints and files are its own. Every DDP process decides from the dir as
    # it finds it, so that all skip or refuse alike: under SLURM a job's tasks all start at once, and one that went
    # on alone would wait for rank 0 in DDP's rendezvous until its timeout. Only rank 0 clears the dir.
    if cfg.get("ckpt_path"):
        return None
    if is_finished(output_dir) and not cfg.get("overwrite", False):
        if multirun and same_config(output_dir, OmegaConf.to_container(cfg, resolve=True)):
            log.info("%s finished with this config already: skipped", output_dir)
            return json.loads((output_dir / METRICS_FILE).read_text())
        key, which = ("hydra.sweep.dir", " of another config") if multirun else ("hydra.run.dir", "")
        raise ConfigError(
            f"{key}: {output_dir} holds a finished run (metrics.json){which}: choose another {key}, or add "
            "overwrite=true to replace it."
        )
    if rank_zero_only.rank == 0:
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
