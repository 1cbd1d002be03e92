"""Writes that a crash or a concurrent run can never leave half-done: write beside the target, then rename.

``os.replace`` within one directory is atomic on POSIX, so a reader sees the old file (or none) or the whole new
one. Every cache and result file of recarena is written through these two helpers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staging_dir(dest: str | Path) -> Iterator[Path]:
    """A temp directory beside ``dest`` to build a whole directory in, removed whatever happens.

    The caller renames it (or a part of it) onto ``dest`` once complete, with ``os.replace``; anything left
    (an error, or a concurrent run that completed ``dest`` first) is deleted on exit.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; caches and run dirs are meant to be read by others
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
