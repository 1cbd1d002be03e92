"""Atomic writes: the target is either untouched or complete; no temp file survives an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from recarena import atomic
from recarena.atomic import atomic_file, staging_dir


def test_atomic_file_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    with atomic_file(target) as handle:
        handle.write("new")
        assert not target.exists()  # nothing visible until the block completes
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_atomic_file_keeps_old_content_on_error(tmp_path: Path) -> None:
    target = tmp_path / "leaderboard.md"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.md"]


def test_atomic_file_cleans_up_when_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError), atomic_file(tmp_path / "x.md") as handle:
        handle.write("x")
    assert not list(tmp_path.iterdir())


def test_staging_dir_is_removed_whatever_happens(tmp_path: Path) -> None:
    with staging_dir(tmp_path / "corpus") as tmp:
        (tmp / "part").write_text("x")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError), staging_dir(tmp_path / "corpus") as tmp:
        raise ValueError
    assert not list(tmp_path.iterdir())


def test_json_is_strict_a_diverged_metric_is_null(tmp_path: Path) -> None:
    """metrics.json, tuning.json and the --format json outputs never hold a bare NaN (invalid JSON)."""
    import json

    import numpy as np
    import torch

    from recarena.atomic import write_json

    path = tmp_path / "metrics.json"
    write_json(path, {"val": {"val/rmse": float("nan"), "val/mae": np.float32(0.5)}, "test": [np.inf, -np.inf],
                      "count": np.int64(3), "loss": torch.tensor(2.0), "ks": np.array([10, 20]), "ok": True})  # fmt: skip
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert strict == {"val": {"val/rmse": None, "val/mae": 0.5}, "test": [None, None], "count": 3, "loss": 2.0,
                      "ks": [10, 20], "ok": True}  # fmt: skip
