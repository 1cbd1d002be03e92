"""The recarena command dispatches to the modules that own each subcommand."""

from __future__ import annotations

import json
from pathlib import Path

from recarena.cli import main


def test_help_lists_commands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "fetch" in out and "leaderboard" in out


def test_unknown_command_exits_2(capsys) -> None:
    assert main(["frobnicate"]) == 2


def test_leaderboard_from_run_dirs(tmp_path: Path) -> None:
    for seed, rmse in ((1, 0.90), (2, 0.94)):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({
            "format_version": 1, "model": "mf", "loss": "mse", "data": "ml-100k", "split": "random", "seed": seed,
            "overrides": ["model=mf", f"seed={seed}"], "val": {"val/rmse": rmse}, "test": {"test/rmse": rmse},
            "monitor": "val/rmse", "monitor_mode": "min", "wall_seconds": 1.0,
        }))
    assert main(["leaderboard", str(tmp_path)]) == 0
    assert "0.920 ± 0.028" in (tmp_path / "leaderboard.md").read_text()
