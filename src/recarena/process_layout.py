"""How many processes a run's trainer runs on each node, read from ``trainer.strategy`` and ``trainer.devices``
alone: the SLURM preset asks for one task per process (conf/hydra/launcher/slurm.yaml), ``threads: auto`` gives
each process its share of the cores (:mod:`recarena.threads`), and config checks warn about DDP-only effects.

Lightning runs ``strategy: auto`` with more than one device as DDP, and a ``ddp*``, ``fsdp`` or ``deepspeed``
strategy as one process per device. Torch-free (only the config's values are read), so config resolvers may use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

#: DDP variants that start their processes from inside the first one (Python multiprocessing): under a cluster
#: that starts one task per process (SLURM) each task would start its own, so they are refused there.
SPAWNING = ("spawn", "fork", "notebook")
#: Strategies that run one process per device.
PER_DEVICE = ("ddp", "fsdp", "deepspeed")


def device_count(devices: Any) -> int | None:
    """``trainer.devices`` as a number of devices: ``4`` -> 4, ``[0, 1]`` or ``"0,1"`` -> 2, ``"2"`` -> 2;
    None where the config alone cannot say (``auto``, ``-1``: every device the machine has)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices >= 1 else None
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        return int(text) if text.isdigit() and int(text) >= 1 else None
    if isinstance(devices, Sequence):
        return len(devices)
    return None


def is_distributed(strategy: Any, devices: Any) -> bool:
    """Whether the trainer runs several processes per node (see the module docstring)."""
    if strategy is None or str(strategy) == "auto":
        return (device_count(devices) or 1) > 1
    return any(name in str(strategy) for name in PER_DEVICE)


def processes_per_node(strategy: Any, devices: Any) -> int:
    """Processes the trainer runs on each node: ``trainer.devices`` when distributed, else 1.

    Raises:
        ValueError: distributed with a number of devices the config does not give (``auto``), or a strategy
            given as an object rather than by name.
    """
    if strategy is not None and not isinstance(strategy, str):
        raise ValueError(f"give trainer.strategy by name (ddp, fsdp, ...), got {strategy!r}")
    if not is_distributed(strategy, devices):
        return 1
    if (count := device_count(devices)) is None:
        raise ValueError(f"trainer.strategy={strategy} needs trainer.devices as a number of processes per node "
                         f"(an integer >= 1 or a list of devices), got trainer.devices={devices!r}")  # fmt: skip
    return count


def task_per_process(strategy: Any, devices: Any) -> int:
    """Tasks per node a cluster that starts the processes itself (SLURM) must start: :func:`processes_per_node`,
    refusing the DDP variants that start processes from inside the first one.

    Raises:
        ValueError: as :func:`processes_per_node`, or a spawning strategy with several processes.
    """
    count = processes_per_node(strategy, devices)
    if count > 1 and any(name in str(strategy) for name in SPAWNING):
        raise ValueError(f"trainer.strategy={strategy} starts its processes itself; under hydra/launcher=slurm, "
                         "where SLURM starts one task per process, use trainer.strategy=ddp")  # fmt: skip
    return count


#: Where a process finds its global rank, in the order Lightning reads them (``rank_zero_only.rank``).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """This process's rank in a distributed job, 0 outside one: read from the environment as Lightning reads it,
    for code that runs before (or without) Lightning, such as Hydra's job callbacks in each SLURM task."""
    for name in RANK_VARIABLES:
        if (value := os.environ.get(name, "")).isdigit():
            return int(value)
    return 0
