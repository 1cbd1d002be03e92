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
- ``${recarena.processes_per_node:...}`` and ``${recarena.gpus_per_node:...}`` (``hydra/launcher=slurm``): the SLURM
  tasks and GPUs of each node a job asks for, read from the trainer (:func:`processes_per_node`).

Only omegaconf is imported here: ``import recarena`` stays light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


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


def processes_per_node(strategy: Any, devices: Any) -> int:
    """SLURM tasks per node: one per DDP process (``trainer.devices``) when the run is distributed (a DDP strategy,
    or Lightning's ``auto`` with more than one device, which it runs as DDP), else one. Under SLURM, Lightning does
    not start the DDP processes itself: it reads each task's rank from SLURM's variables (``SLURM_PROCID``,
    ``SLURM_NODEID``), so the launcher must ask for one task per process."""
    if not _distributed(strategy, devices):
        return 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"hydra/launcher=slurm with trainer=ddp needs trainer.devices to be the number of processes "
                         f"per node (an integer >= 1), got trainer.devices={devices!r}")  # fmt: skip
    return devices


def _distributed(strategy: Any, devices: Any) -> bool:
    if strategy is None or str(strategy) == "auto":
        return isinstance(devices, int) and not isinstance(devices, bool) and devices > 1
    return "ddp" in str(strategy)


def gpus_per_node(accelerator: Any, strategy: Any, devices: Any) -> int:
    """SLURM GPUs per node: a job on the GPU (``trainer.accelerator`` gpu or cuda) asks for one per process of the
    node, a CPU job (or ``accelerator: auto``, which cannot say) for none."""
    return processes_per_node(strategy, devices) if str(accelerator) in ("gpu", "cuda") else 0


def register_resolvers() -> None:
    """Register every ``recarena.*`` resolver (idempotent; before Hydra composes a config)."""
    for name, resolver in (("recarena.optuna_direction", optuna_direction), ("recarena.sweep_group", sweep_group),
                           ("recarena.families", families), ("recarena.pid", os.getpid),
                           ("recarena.metric_mode", metric_mode), ("recarena.sweep", sweep),
                           ("recarena.processes_per_node", processes_per_node),
                           ("recarena.gpus_per_node", gpus_per_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
