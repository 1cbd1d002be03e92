"""The config resolvers of ``conf/`` (``${recarena.*:...}``), registered on ``import recarena``.

- ``${recarena.optuna_direction:${eval.monitor_mode}}`` (conf/hparams_search/): :func:`recarena.hparams.optuna_direction`;
- ``${recarena.metric_mode:${eval.monitor}}`` (conf/eval/): ``min`` or ``max``, the metric's direction in
  :mod:`recarena.evaluation.registry`;
- ``${recarena.sweep:${report_seeds}}`` (conf/experiment/): a list as a sweeper's comma-separated values;
- ``${recarena.families:}`` (experiment=compare_families): every family preset of ``conf/family/``, comma-separated
  for a sweeper's ``params`` (:func:`recarena.checks.family_presets`);
- ``${recarena.pid:}`` (``hydra.run.dir``): this process's id, so that two runs started in the same second get
  two run dirs;
- ``${recarena.sweep_group:}`` (``group`` in conf/train.yaml): in a multirun, a name for the sweep, so that its jobs'
  W&B runs and the sweep-end leaderboard run share one group without ``group=`` on the command line; None in a
  single run or outside Hydra (the compose API);
- ``${recarena.tasks_per_node:...}`` and ``${recarena.gpus_per_node:...}`` (``hydra/launcher=slurm``): the SLURM
  tasks and GPUs of each node a job asks for, read from the trainer (:func:`recarena.process_layout.task_per_process`: under SLURM
  Lightning reads each task's rank from SLURM's variables, so SLURM must start one task per process).

Only omegaconf (and the torch-free :mod:`recarena.process_layout`) is imported here: ``import recarena`` stays
light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recarena.process_layout import task_per_process


def sweep_group_name(sweep_dir: str | Path) -> str:
    """``multirun/2026-11-23/10-00-00`` -> ``sweep-2026-11-23-10-00-00``: the sweep dir's last two parts."""
    return "sweep-" + "-".join(Path(str(sweep_dir)).parts[-2:])


def sweep_group() -> str | None:
    """The running sweep's group name (:func:`sweep_group_name`), None when no multirun is running."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return sweep_group_name(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None


def optuna_direction(mode: str) -> str:
    """:func:`recarena.hparams.optuna_direction`, imported when a search preset is resolved (Hydra's callback
    machinery stays out of ``import recarena``)."""
    from recarena.hparams import optuna_direction as direction

    return direction(mode)


def metric_mode(metric: str) -> str:
    """:func:`recarena.evaluation.registry.monitor_mode` (torch-free)."""
    from recarena.evaluation.registry import monitor_mode

    return monitor_mode(metric)


def sweep(values: list[Any]) -> str:
    """``[42, 43, 44]`` -> ``42,43,44``: the values of a list, as a sweeper's ``params`` entry sweeps them."""
    return ",".join(str(value) for value in values)


def families() -> str:
    """``popularity,mf,...``: the names of ``conf/family/*.yaml``, for a sweep over every family."""
    from recarena.checks import family_presets

    return ",".join(family_presets())


def slurm_gpus_per_node(accelerator: Any, tasks_per_node: int) -> int:
    """SLURM GPUs per node: one per task on the GPU (``trainer.accelerator`` gpu or cuda), none on the CPU (or with
    ``accelerator: auto``, which the config alone cannot read as either)."""
    return int(tasks_per_node) if str(accelerator) in ("gpu", "cuda") else 0


def register_resolvers() -> None:
    """Register every ``recarena.*`` resolver (idempotent; before Hydra composes a config)."""
    for name, resolver in (("recarena.optuna_direction", optuna_direction), ("recarena.sweep_group", sweep_group),
                           ("recarena.families", families), ("recarena.pid", os.getpid),
                           ("recarena.metric_mode", metric_mode), ("recarena.sweep", sweep),
                           ("recarena.tasks_per_node", task_per_process),
                           ("recarena.gpus_per_node", slurm_gpus_per_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
