"""How many CPU threads one job uses (``threads`` in conf/train.yaml), so that jobs running side by side never
oversubscribe the cores.

Threads that outnumber free cores cost far more than they give: torch's OpenMP workers spin-wait for each other,
so a job whose second thread shares its core with another process runs several times slower (a default
``python train.py`` fit on ML-100K, 2 cores, one of them busy: 1.8-2.7 s with 1 thread, 7.3-8.1 s with 2; see
README "Threads"). ``auto`` therefore splits the cores this process may run on among the jobs the launcher runs
at once, read from the launcher's own config keys (an ``OMP_NUM_THREADS`` in the environment wins over them):

- ``n_jobs`` (Hydra's joblib launcher): that many jobs share this machine's cores (-1: one per core, -2: all but
  one, as joblib counts);
- ``cpus_per_task`` (the submitit launchers): the cores the launcher gives each job; when unset, 1, since
  ``submitit_local`` starts every job of the sweep at once;
- neither (Hydra's basic launcher, one job at a time, or no Hydra at all): every available core;

and, outside submitit, divides a job's share among the DDP processes Lightning starts for it on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

AUTO = "auto"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: what a container, cgroup or SLURM allocation grants)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def concurrent_jobs(n_jobs: int, cores: int) -> int:
    """Jobs joblib runs at once for its ``n_jobs``: positive as given, negative counted back from the cores."""
    return n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)


def job_threads(setting: Any, launcher: Mapping[str, Any] | None = None, processes: int = 1) -> int:
    """Threads for one process of a job: ``setting`` itself when a number, else (``auto``) its share of the cores.
    ``processes``: the DDP processes Lightning starts on this machine for the job, which share its cores (under
    submitit each process is a task with its own ``cpus_per_task``)."""
    if setting != AUTO:
        return int(setting)
    launcher = launcher or {}
    processes = max(processes, 1)
    if (env := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(env) > 0:
        # The user's limit per process, as torch itself reads it; in a joblib worker, joblib's share for the job,
        # which the job's own DDP processes (children of the worker) split.
        return max(int(env) // processes, 1) if launcher.get("n_jobs") is not None else int(env)
    cores = available_cores()
    if "cpus_per_task" in launcher:
        return int(launcher["cpus_per_task"] or 1)
    jobs = concurrent_jobs(int(launcher["n_jobs"]), cores) if launcher.get("n_jobs") is not None else 1
    return max(cores // (jobs * processes), 1)


def use_threads(n: int) -> None:
    """Limit torch's intra-op pool and the BLAS/OpenMP pools numpy and scipy call into to ``n`` threads."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)
