"""Parallel and cluster sweeps: Hydra's joblib and submitit launchers run recarena's jobs side by side, each with
its share of the cores (``threads``), and the sweep-end leaderboard lists every job."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_info

from recarena import launchers, threads
from recarena.checks import check_config
from recarena.errors import ConfigError
from recarena.launchers import check_launcher_plugin
from tests.conftest import TINY_DATA, compose_config
from tests.test_train import REPO, _run_train

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="the launchers extra; make test installs it")
QUIET = ["trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "verbose=false"]


@pytest.mark.parametrize(
    ("setting", "launcher", "expected"),
    [
        (3, {}, 3),  # a number is used as it is
        ("auto", {}, 8),  # one job at a time: every core
        ("auto", {"n_jobs": 2}, 4),  # joblib: the cores shared among its concurrent jobs
        ("auto", {"n_jobs": 3}, 2),
        ("auto", {"n_jobs": -1}, 1),  # one job per core
        ("auto", {"n_jobs": -7}, 4),  # all cores but 6 -> 2 jobs
        ("auto", {"n_jobs": 16}, 1),  # never below one thread
        ("auto", {"cpus_per_task": 6}, 6),  # submitit: the cores each job was given
        ("auto", {"cpus_per_task": None}, 1),  # submitit_local starts every job at once
    ],
)
def test_auto_threads_split_the_cores_among_concurrent_jobs(
    setting: object, launcher: dict, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.job_threads(setting, launcher) == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's explicit limit wins over auto, never over a number
    assert threads.job_threads(setting, launcher) == (setting if isinstance(setting, int) else 5)


@pytest.mark.parametrize(
    ("launcher", "processes", "expected"),
    [
        ({}, 2, 4),  # trainer=ddp trainer.devices=2 on one machine: Lightning's two processes share the 8 cores
        ({"n_jobs": 2}, 2, 2),  # two such jobs at once
        ({"cpus_per_task": 6}, 4, 6),  # SLURM: every process is a task with its own cores
        ({}, 16, 1),
    ],
)
def test_auto_threads_share_a_job_s_cores_among_its_ddp_processes(
    launcher: dict, processes: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.job_threads("auto", launcher, processes) == expected


def test_in_a_joblib_worker_the_job_s_ddp_processes_split_joblib_s_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """joblib's workers carry OMP_NUM_THREADS = cores // n_jobs, the job's share: its DDP processes split it. Set
    by a user outside joblib, OMP_NUM_THREADS is each process's own limit, as torch reads it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.job_threads("auto", {"n_jobs": 2}, 2) == 2
    assert threads.job_threads("auto", {}, 2) == 4


def test_use_threads_limits_torch_and_blas() -> None:
    before = torch.get_num_threads()
    try:
        threads.use_threads(1)
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        threads.use_threads(before)


def _threads_error(parsed: str) -> str:
    return (f"threads must be a positive number of CPU threads per job or auto (this job's share of the cores), "
            f"got threads={parsed}.")  # fmt: skip


@pytest.mark.parametrize(("value", "parsed"), [("0", "0"), ("-2", "-2")])
def test_bad_threads_are_refused_at_start_up(value: str, parsed: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(_threads_error(parsed))):
        check_config(compose_config([f"threads={value}", *TINY_DATA], tmp_path / "run"))


def test_bad_threads_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    proc = _run_train(["threads=two", *TINY_DATA, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, {})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: {_threads_error(repr('two'))}"]
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("name", ["joblib", "parallel", "submitit_slurm", "slurm"])
def test_a_missing_launcher_plugin_names_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's own config or a conf/hydra/launcher/ preset built on it: one line, what to install."""
    missing = {plugin: ("hydra_plugins.not_installed_here", extra) for plugin, (_, extra) in launchers.LAUNCHER_PLUGINS.items()}
    monkeypatch.setattr(launchers, "LAUNCHER_PLUGINS", missing)
    with pytest.raises(ConfigError, match=re.escape(f"hydra/launcher={name} needs Hydra's ")) as error:
        check_launcher_plugin(["model=mf", f"hydra/launcher={name}"])
    assert str(error.value).endswith("pip install 'recarena[launchers]'.")
    check_launcher_plugin(["hydra/launcher=basic"])  # Hydra's own launcher needs nothing


def _sweep(tmp_path: Path, data_cache: Path, launcher: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[dict]]:
    """The sweep with the launcher, ``threads: auto`` read from the launcher alone (an ``OMP_NUM_THREADS`` would win
    over it: a pytest-xdist worker sets one)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sweep = tmp_path / "sweep"
    proc = _run_train(["-m", "model=mf,popularity", *launcher, *TINY_DATA, *QUIET, f"hydra.sweep.dir={sweep}"],
                      tmp_path, {"RECARENA_DATA": str(data_cache)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    board = pd.read_csv(sweep / "leaderboard.csv")
    assert sorted(board["model"]) == sorted(r["model"] for r in runs) == ["mf", "popularity"]  # every job, once
    assert all(r["test"]["test/ndcg@10"] > 0 for r in runs)
    return sweep, runs


def test_joblib_runs_two_jobs_at_once_with_one_thread_each(tmp_path: Path, data_cache: Path, monkeypatch) -> None:
    _, runs = _sweep(tmp_path, data_cache, ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "threads=1"],
                     monkeypatch)  # fmt: skip
    assert [r["threads"] for r in runs] == [1, 1]


def test_joblib_auto_threads_are_each_jobs_share(tmp_path: Path, data_cache: Path, monkeypatch) -> None:
    _, runs = _sweep(tmp_path, data_cache, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], monkeypatch)
    assert [r["threads"] for r in runs] == [max(threads.available_cores() // 2, 1)] * 2


def test_submitit_local_runs_the_sweep_as_slurm_would(tmp_path: Path, data_cache: Path, monkeypatch) -> None:
    """The same code path as submitit_slurm (submitit pickles each job and runs it in its own process)."""
    sweep, runs = _sweep(tmp_path, data_cache, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
                         monkeypatch)  # fmt: skip
    assert [r["threads"] for r in runs] == [1, 1]  # no cpus_per_task: jobs start together, one thread each
    assert list((sweep / ".submitit").iterdir())  # submitit's own job files


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        (["trainer=cpu"], (1, 1, 0)),
        (["trainer=gpu"], (1, 1, 1)),
        (["trainer=gpu", "trainer.devices=2"], (1, 2, 2)),  # Lightning runs several devices as DDP
        (["trainer=gpu", "trainer.devices=[0,1,2]"], (1, 3, 3)),
        (["trainer=ddp", "trainer.accelerator=gpu", "trainer.strategy=fsdp"], (1, 2, 2)),
        (["trainer=ddp", "trainer.accelerator=cpu"], (1, 2, 0)),
        (["trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4", "trainer.num_nodes=2"], (2, 4, 4)),
    ],
)
def test_the_slurm_preset_asks_for_a_task_per_ddp_process_on_each_node(trainer: list[str], expected: tuple,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """hydra/launcher=slurm reads nodes, tasks per node and GPUs per node from the trainer: Lightning takes each
    DDP process's rank from SLURM, so SLURM must start one task per process."""
    launcher = compose_config(["hydra/launcher=slurm", *trainer], tmp_path / "run").hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == expected


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        (["trainer=ddp", "trainer.devices=auto"], r"trainer.strategy=ddp needs trainer.devices as a number of "
                                                  r"processes per node .* got trainer.devices='auto'"),
        (["trainer=ddp", "trainer.strategy=ddp_spawn"], r"trainer.strategy=ddp_spawn starts its processes itself; "
                                                        r"under hydra/launcher=slurm, .* use trainer.strategy=ddp"),
    ],
)
def test_the_slurm_preset_refuses_what_slurm_cannot_start_in_one_line(trainer: list[str], message: str,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    proc = _run_train(["-m", "hydra/launcher=slurm", *trainer, *TINY_DATA], tmp_path, {})
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert re.fullmatch(r"error: hydra.launcher.tasks_per_node: " + message, line), line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("devices", "nodes"), [(2, 1), (1, 2)], ids=["2_tasks_1_node", "1_task_2_nodes"])
def test_ddp_under_slurm_s_variables_trains_as_one_process_at_the_global_batch(
    devices: int, nodes: int, tmp_path: Path, data_cache: Path
) -> None:
    """What a SLURM job of the slurm preset runs, without SLURM: every task starts train.py with SLURM's variables
    (its SLURM_PROCID, SLURM_NODEID, ...), Lightning reads the ranks from them and joins the tasks into one DDP
    group, and both tasks share one run dir (recarena.run reports from rank 0). Two tasks at batch 64 give the
    metrics of one process at 128, as
    test_train.py's DDP test checks for processes Lightning starts itself (tasks that trained alone, at 64, would
    not: val RMSE 1.345 against 1.377 at 128 when written)."""
    overrides = [*TINY_DATA, "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "verbose=false",
                 "callbacks.early_stopping=null", "family=mf"]  # fmt: skip
    env = {"RECARENA_DATA": str(data_cache), "OMP_NUM_THREADS": "1"}
    one = _run_train(["trainer=cpu", "batch_size=128", *overrides, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path, env)
    assert one.returncode == 0, one.stderr[-3000:]
    run_dir = tmp_path / "slurm"
    args = [sys.executable, str(REPO / "train.py"), "trainer=ddp", "trainer.accelerator=cpu",
            f"trainer.devices={devices}", f"trainer.num_nodes={nodes}", "batch_size=64", *overrides,
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": str(devices), "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NAME": "recarena", "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    codes, _ = _slurm_tasks(args, tmp_path, {**env, **slurm}, devices)
    assert codes == [0, 0]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    result = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        for name, value in single[split].items():
            assert result[split][name] == pytest.approx(value, rel=2e-4, abs=1e-6), name
    # The same job again on its finished run dir: every task refuses it (none waits for a rank 0 that is gone).
    codes, errors = _slurm_tasks(args, tmp_path, {**env, **slurm, "MASTER_PORT": str(_free_port())}, devices,
                                 timeout=120)  # fmt: skip
    assert codes == [2, 2] and all("holds a finished run" in error for error in errors), errors


#: Variables of an enclosing job (a CI runner inside a SLURM allocation, torchrun) that would steer Lightning.
_FOREIGN = ("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "TORCHELASTIC_", "GROUP_RANK", "NODE_RANK")


def _slurm_tasks(args: list[str], cwd: Path, env: dict[str, str], devices: int,
                 timeout: float = 300) -> tuple[list[int], list[str]]:  # fmt: skip
    """Start a 2-task SLURM job's tasks (``devices`` per node) by hand; their exit codes and stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    tasks = [
        subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**base, **env, "SLURM_NNODES": str(2 // devices), "SLURM_PROCID": str(rank),
                              "SLURM_LOCALID": str(rank % devices), "SLURM_NODEID": str(rank // devices)})
        for rank in range(2)
    ]  # fmt: skip
    try:
        errors = [task.communicate(timeout=timeout)[1] for task in tasks]
    finally:
        for task in tasks:
            task.kill()
    return [task.returncode for task in tasks], errors
