"""Writes that a crash or a concurrent run can never leave half-done: write beside the target, then rename.

``os.replace`` within one directory is atomic on POSIX, so a reader sees the old file (or none) or the whole new
one. Every cache and result file of recarena is written through these two helpers.

A staging file or directory is named ``.<target>.<host>-<pid>.<random>``: an error removes it at once; one that a
killed process left behind is removed by the next write to the same target on the same host, once that process
is gone. A full disk (or quota) is a :class:`~recarena.errors.StorageError` naming the target: one line, exit 2.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from recarena.errors import StorageError

#: This host, in staging names: a process id means something only on the host that ran it (caches may be shared).
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        _raise_if_no_space(error, path)
        raise


@contextlib.contextmanager
def staging_dir(dest: str | Path) -> Iterator[Path]:
    """A temp directory beside ``dest`` to build a whole directory in, removed whatever happens.

    The caller renames it (or a part of it) onto ``dest`` once complete, with ``os.replace``; anything left
    (an error, or a concurrent run that completed ``dest`` first) is deleted on exit.
    """
    dest = Path(dest)
    _make_parent(dest)
    tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(dest), dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; caches and run dirs are meant to be read by others
    try:
        yield tmp
    except BaseException as error:
        _raise_if_no_space(error, dest)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _raise_if_no_space(error, path)
        raise
    remove_stale_staging(path)


def _staging_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}."


def remove_stale_staging(path: Path) -> list[Path]:
    """Remove the staging files and directories beside ``path`` that processes of this host no longer running left
    (a kill mid-write); returns them. A live writer's staging, or another host's, is left alone."""
    removed, ours = [], f".{path.name}.{_HOST}-"
    for entry in path.parent.glob(f"{glob.escape(ours)}*"):
        pid = entry.name[len(ours) :].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _raise_if_no_space(error: BaseException, target: Path) -> None:
    """A full disk or quota while writing ``target``: one line naming it (the staging is removed already)."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        raise StorageError(f"no space left writing {target} ({os.strerror(error.errno)}): free some space, or write "
                           "elsewhere (data.cache_dir= or RECARENA_DATA for the data cache, hydra.run.dir= for a "
                           "run)") from error  # fmt: skip


def strict_json_value(value: Any) -> Any:
    """``value`` with every NaN or infinity (a diverged metric) as None, numpy/torch scalars and arrays as Python
    numbers and lists: what :func:`write_json` and the ``--format json`` outputs write is strict JSON, which
    every reader accepts (Python's json would otherwise write a bare ``NaN``)."""
    if isinstance(value, dict):
        return {str(k): strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy / torch scalars and arrays
        return strict_json_value(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_json(path: str | Path, payload: Any) -> None:
    """``payload`` as strict, indented JSON, atomically (a reader never sees half a file)."""
    with atomic_file(path) as handle:
        json.dump(strict_json_value(payload), handle, indent=2, allow_nan=False)
