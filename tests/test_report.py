"""Leaderboards from hand-written metrics.json files: aggregation, direction, robustness, writers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from rich.console import Console

from recarena import report
from recarena.record import config_key
from recarena.report import (
    SIGNIFICANCE_HEADERS,
    LeaderboardCallback,
    find_metrics,
    leaderboard,
    leaderboard_table,
    load_runs,
    write_leaderboard,
)

# config -> seed -> (test rmse, test ndcg@10); B is better on both.
VALUES = {
    "a": {1: (0.90, 0.040), 2: (0.92, 0.050), 3: (0.94, 0.060)},
    "b": {1: (0.85, 0.070), 2: (0.86, 0.080), 3: (0.87, 0.090)},
}
LR = {"a": "0.01", "b": "0.001"}


def _write(run_dir: Path, payload: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(payload))


def _write_per_user(run_dir: Path, values: dict[str, list[float]], user_ids: list[int] | None = None) -> None:
    """A run's per_user_metrics.parquet as recarena.evaluation.per_user writes it: ``values`` maps a metric
    column (``ndcg@10``, ``rmse``) to one value per user; users are ``user_ids`` (default 1..n)."""
    n = len(next(iter(values.values())))
    ids = list(range(1, n + 1)) if user_ids is None else user_ids
    frame = pd.DataFrame({"user": np.arange(n), "user_id": ids, "n_relevant": 1, **values})
    frame.to_parquet(run_dir / "per_user_metrics.parquet", index=False)


def _write_csv_log(run_dir: Path, losses: list[float], val: list[float], monitor: str = "val/ndcg@10") -> None:
    """A CSV logger file laid out as Lightning's CSVLogger leaves it in a run (csv/metrics.csv): per epoch a
    validation row and a training row, then the best checkpoint's validation and the test after fitting."""
    rows = []
    for epoch, (loss, v) in enumerate(zip(losses, val, strict=True)):
        rows += [{"epoch": epoch, "step": epoch, monitor: v}, {"epoch": epoch, "step": epoch, "train/loss": loss}]
    end = len(losses)
    rows += [{"epoch": end, "step": end, monitor: max(val)}, {"epoch": end, "step": end, "test/ndcg@10": max(val)}]
    (run_dir / "csv").mkdir()
    pd.DataFrame(rows).to_csv(run_dir / "csv" / "metrics.csv", index=False)


def _payload(model: str, seed: int, overrides: list[str], test: dict, val: dict, with_key: bool) -> dict:
    d = {
        "format_version": 1, "model": model, "loss": "mse", "data": "ml-100k", "split": "temporal",
        "seed": seed, "overrides": overrides, "val": val, "test": test, "best_epoch": 3, "epochs": 5,
        "fit_seconds": 10.0, "eval_seconds": 1.0, "wall_seconds": 10.0 + seed, "train_samples_per_s": 1e5,
        "monitor": "val/ndcg@10", "monitor_mode": "max", "git_commit": None,
    }
    if with_key:
        d["config_key"] = config_key(overrides)
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 configurations x 3 seeds of mf, + popularity (no rmse), as Hydra's numbered job dirs."""
    num = 0
    for cfg, seeds in VALUES.items():
        for seed, (rmse, ndcg) in seeds.items():
            ov = ["model=mf", f"optimizer.lr={LR[cfg]}", f"seed={seed}"]
            test = {"test/rmse": rmse, "test/mae": rmse - 0.2, "test/ndcg@10": ndcg, "test/recall@10": ndcg * 2,
                    "test/ndcg@20": ndcg * 1.5, "test/users_ranked": 900}
            # config "a" has no config_key: report.py must recompute it (and strip the seed).
            _write(tmp_path / str(num), _payload("mf", seed, ov, test, {"val/ndcg@10": ndcg}, cfg == "b"))
            num += 1
    pop_test = {"test/ndcg@10": 0.065, "test/recall@10": 0.11, "test/ndcg@20": 0.09}
    _write(tmp_path / str(num), _payload("popularity", 7, ["model=popularity", "split.seed=7"], pop_test,
                                         {"val/ndcg@10": 0.06}, True))
    return tmp_path


def _md_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_config_key_strips_seeds() -> None:
    assert config_key(["seed=3", "model=mf", "+split.seed=4", "optimizer.lr=0.1"]) == "model=mf optimizer.lr=0.1"


def test_load_runs_one_row_per_run(sweep: Path) -> None:
    runs = load_runs([sweep])
    assert len(runs) == 7 and len(find_metrics([sweep, sweep / "0"])) == 7
    assert set(runs["config_key"]) == {"model=mf optimizer.lr=0.01", "model=mf optimizer.lr=0.001", "model=popularity"}
    assert list(runs.columns[:6]) == ["model", "loss", "data", "split", "seed", "config_key"]
    assert {"test/rmse", "test/ndcg@10", "val/ndcg@10", "best_epoch", "wall_seconds", "run_dir"} <= set(runs.columns)
    assert runs.loc[runs["model"] == "popularity", "test/rmse"].isna().all()


def test_leaderboard_aggregates_and_sorts(sweep: Path) -> None:
    board = leaderboard(load_runs([sweep]))
    assert board.attrs["primary"] == "test/ndcg@10"  # test twin of the monitor val/ndcg@10
    assert list(board["model"]) == ["mf", "popularity", "mf"]  # ndcg 0.08 > 0.065 > 0.05
    assert list(board["n_seeds"]) == [3, 1, 3]
    a = board[board["config_key"] == "model=mf optimizer.lr=0.01"].iloc[0]
    assert a["test/rmse_mean"] == pytest.approx(0.92) and a["test/rmse_std"] == pytest.approx(0.02)
    assert pd.isna(board.loc[1, "test/ndcg@10_std"])
    by_rmse = leaderboard(load_runs([sweep]), primary="test/rmse")
    assert list(by_rmse["test/rmse_mean"].round(2)[:2]) == [0.86, 0.92] and by_rmse["test/rmse_mean"].isna().iloc[-1]
    with pytest.raises(ValueError):
        leaderboard(load_runs([sweep]), primary="test/nope")


def test_write_leaderboard_csv_and_md(sweep: Path) -> None:
    csv, md, html, *plots = write_leaderboard(sweep)
    assert html.name == "leaderboard.html" and {p.name for p in plots} == {"leaderboard_metrics.png",
                                                                            "leaderboard_ndcg_at_k.png"}
    per_run = pd.read_csv(csv)
    assert len(per_run) == 7 and list(per_run.columns[:6]) == ["model", "loss", "data", "split", "seed", "config_key"]
    assert {"test/rmse", "test/mae", "test/ndcg@10", "test/users_ranked", "wall_seconds"} <= set(per_run.columns)
    assert list(per_run["seed"][:3]) == [1, 2, 3] and per_run["test/ndcg@10"].iloc[0] == pytest.approx(0.07)
    assert per_run.loc[per_run["model"] == "popularity", "test/rmse"].isna().all()

    text = md.read_text()
    assert "mean ± std" in text and "`test/ndcg@10` (higher is better)" in text
    header, _, *rows = _md_rows(text)
    assert header[:6] == ["configuration", "model", "loss", "data", "split", "n_seeds"]
    # The paired test (vs the best row on val/ndcg@10: b) right after the primary metric's column.
    assert header[6:] == ["test/rmse", "test/mae", "test/ndcg@10", *SIGNIFICANCE_HEADERS, "test/recall@10",
                          "test/ndcg@20", "wall_seconds"]
    assert len(rows) == 3  # one per configuration
    col = {h: i for i, h in enumerate(header)}
    b, pop, a = rows
    assert a[0] == "`model=mf optimizer.lr=0.01`" and a[col["n_seeds"]] == "3"
    assert a[col["test/rmse"]] == "0.920 ± 0.020" and a[col["test/ndcg@10"]] == "0.050 ± 0.010"
    assert b[col["test/rmse"]] == "**0.860 ± 0.010**"  # lowest rmse wins
    assert b[col["test/ndcg@10"]] == "**0.080 ± 0.010**"  # highest ndcg wins
    assert pop[col["test/rmse"]] == "" and pop[col["test/mae"]] == ""  # not reported: empty cell
    assert pop[col["test/ndcg@10"]] == "0.065" and pop[col["test/recall@10"]] == "0.110"  # one seed: mean only
    assert pop[col["test/ndcg@20"]] == "0.090"  # not bold: b has 0.120
    assert not any("**" in c for c in [*a[6:], b[col["wall_seconds"]]])  # wall time never bold
    # No run saved per-user metrics: the reference is named, every other row has empty test cells.
    tests = slice(col["Δ vs ref"], col["significant"] + 1)
    assert b[tests] == ["ref", "", ""] and a[tests] == pop[tests] == ["", "", ""]
    assert per_run["p_value"].isna().all() and per_run["significant"].isna().all()
    assert not [p for p in sweep.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_corrupt_and_foreign_files_are_skipped(sweep: Path, caplog: pytest.LogCaptureFixture) -> None:
    (sweep / "99").mkdir()
    (sweep / "99" / "metrics.json").write_text('{"format_version": 1, "model": ')
    _write(sweep / "98", {"format_version": 2, "model": "mf"})
    with caplog.at_level(logging.WARNING, logger="recarena.report"):
        runs = load_runs([sweep])
    assert len(runs) == 7
    assert str(sweep / "99" / "metrics.json") in caplog.text and str(sweep / "98" / "metrics.json") in caplog.text


def test_callback_writes_files(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    LeaderboardCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "leaderboard.csv").is_file() and (sweep / "leaderboard.md").is_file()
    out = capsys.readouterr().out  # the rich table, folded to the captured terminal's width
    assert "Leaderboard (sorted by test/ndcg@10" in out and "0.860" in out


def test_callback_without_runs_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recarena.report"):
        LeaderboardCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "no metrics.json" in caplog.text and not list(tmp_path.iterdir())


def test_rich_table_and_cli(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    table = leaderboard_table(load_runs([sweep]))
    assert table.row_count == 3
    console = Console(record=True, width=250)
    console.print(table)
    assert "0.920 ± 0.020" in console.export_text()
    out = tmp_path_factory.mktemp("out")
    assert report.main([str(sweep / "0"), str(sweep / "6"), "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2
    assert report.main([str(out)]) == 1  # nothing to aggregate there


def test_float_overrides_are_shortened_in_the_table_only() -> None:
    from recarena.report import _short_override

    assert _short_override("optimizer.lr=0.0033770655829123") == "optimizer.lr=0.003377"
    assert _short_override("model.n_factors=64") == "model.n_factors=64"  # integers untouched
    assert _short_override("model=mf") == "model=mf" and _short_override("+trainer.x=abc") == "+trainer.x=abc"


def test_columns_latex_and_markdown_for_a_paper(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`recarena leaderboard SWEEP --columns ndcg@10 rmse --latex t.tex --markdown t.md`: the chosen metrics in
    that order; the LaTeX table parsed back holds each configuration's mean ± std, the best in bold."""
    tex, md = tmp_path / "t.tex", tmp_path / "t.md"
    assert report.main([str(sweep), "--columns", "ndcg@10", "rmse", "--latex", str(tex), "--markdown", str(md)]) == 0
    text = tex.read_text()
    assert r"\toprule" in text and r"\midrule" in text and r"\bottomrule" in text
    body = text.split("\\midrule\n")[1].split("\n\\bottomrule")[0].splitlines()
    header = text.split("\\toprule\n")[1].splitlines()[0]
    assert header == r"configuration & seeds & ndcg@10 & rmse \\"
    rows = {cells[0]: cells[1:] for cells in (line.removesuffix(r" \\").split(" & ") for line in body)}
    a, b = "model=mf optimizer.lr=0.01", "model=mf optimizer.lr=0.001"
    assert set(rows) == {a, b, "model=popularity"}
    # B (lr 0.001) is best on both: bold, mean ± std as the leaderboard computed them.
    assert rows[b][1].startswith(r"\textbf{0.080 $\pm$ 0.010}")
    assert rows[b][2] == r"\textbf{0.860 $\pm$ 0.010}"
    assert rows[a][2] == r"0.920 $\pm$ 0.020" and rows["model=popularity"][2] == ""
    markdown = md.read_text()
    columns = next(line for line in markdown.splitlines() if line.startswith("| configuration"))
    assert "recall" not in columns and columns.index("test/ndcg@10") < columns.index("test/rmse")
    assert (sweep / "leaderboard.md").read_text() == markdown  # the sweep's own files use the same columns


def test_an_unknown_column_is_one_line_listing_the_known(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(sweep), "--columns", "ndcg@10", "ndgc@10"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --columns: unknown metric ndgc@10; known: rmse, ")
