"""Interrupted and failed writes leave nothing half-written: a full disk is one line naming the target, and the
staging a killed process left behind is removed by the next write to the same target."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recarena.atomic import atomic_file, remove_stale_staging, staging_dir, write_json
from recarena.errors import USER_ERRORS, StorageError


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_a_file_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(StorageError, match=f"no space left writing {target}.*hydra.run.dir="), atomic_file(target) as h:
        h.write("partial")
        _disk_full()
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert StorageError in USER_ERRORS  # one line and exit code 2 in every command


def test_a_full_disk_while_building_a_directory_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "corpus"
    with pytest.raises(StorageError, match=f"no space left writing {dest}"), staging_dir(dest) as tmp:
        np.savez(tmp / "ratings.npz", x=np.arange(3))
        _disk_full()
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_unchanged(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_file(tmp_path / "a.json") as h:
        h.write("x")
        raise PermissionError(errno.EACCES, "denied")
    assert list(tmp_path.iterdir()) == []


def test_staging_a_killed_writer_left_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "split.npz"
    # A writer killed mid-write (SIGKILL: no cleanup runs) leaves its staging file and directory behind.
    code = ("import os, sys, time; from pathlib import Path; from recarena.atomic import atomic_file, staging_dir\n"
            f"t = Path({str(target)!r})\n"
            "with staging_dir(t) as d, atomic_file(t) as h:\n"
            "    (d / 'part').write_text('x'); h.write('half'); h.flush(); print('written', flush=True)\n"
            "    time.sleep(60)\n")  # fmt: skip
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert writer.stdout.readline().strip() == "written"
    live = sorted(p.name for p in tmp_path.iterdir())
    assert len(live) == 2 and all(name.startswith(".split.npz.") for name in live)
    assert remove_stale_staging(target) == []  # the writer is still running: its staging is left alone
    writer.kill()
    writer.wait()
    write_json(target, {"whole": True})  # the next write to the target cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split.npz"]


def test_staging_of_another_host_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    foreign = tmp_path / ".cache.0123abcd-1.xyz"  # another host's writer (a shared data cache)
    foreign.mkdir()
    write_json(target, {})
    assert foreign.is_dir()


def test_a_full_disk_while_training_ends_the_run_with_one_line(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from recarena.run import train

    monkeypatch.setattr(torch, "save", _disk_full)  # the first checkpoint save fills the disk
    cfg = make_cfg("model=mf")
    with pytest.raises(StorageError, match=r"no space left writing .*checkpoints/.*\.ckpt"):
        train(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    assert not list(run_dir.rglob(".*.tmp")) and not (run_dir / "metrics.json").exists()
