"""Leaderboards from the ``metrics.json`` that ``run.py`` leaves in each run dir: a sweep is only useful
if its runs compare at a glance, so every multirun ends with ``leaderboard.csv`` (one row per run, full
precision, for plotting), ``leaderboard.md`` (one row per configuration, ``mean ± std`` over seeds) and
``leaderboard.html`` (the same table with plots, :mod:`recarena.report_html`). Each configuration is tested
against the best one per user (:mod:`recarena.significance`) where the runs saved ``per_user_metrics.parquet``.
Hydra imports this module at start, so it imports no torch: only pandas, rich and hydra's callback base.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from recarena import significance
from recarena.atomic import atomic_file
from recarena.cli_errors import exit_on_user_error
from recarena.errors import ConfigError
from recarena.evaluation.registry import COUNTS, METRICS, RATING_METRICS, lower_is_better
from recarena.process_layout import process_rank
from recarena.record import ERROR_FILE, KEYS, METRICS_FILE, METRICS_FORMAT_VERSION, config_key

log = logging.getLogger(__name__)

TIMES = ["wall_seconds", "fit_seconds", "train_samples_per_s"]
EXTRAS = ["best_epoch", "epochs", *TIMES]
RANK_ORDER = [metric.name for metric in METRICS.values() if metric.at_k]  # columns at one K, in this order


def find_metrics(paths: Iterable[Path]) -> list[Path]:
    """Every metrics.json under the given run dirs, sweep dirs (searched recursively) or files."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_file():
            found[p.resolve()] = None
        elif p.is_dir():
            found.update(dict.fromkeys(q.resolve() for q in sorted(p.rglob(METRICS_FILE))))
        else:
            log.warning("no such run or sweep dir: %s", p)
    return list(found)


def _metric_key(col: str) -> tuple:
    """Column order: rmse/mae first, then ranking metrics grouped by K, then anything else."""
    split, _, name = col.rpartition("/")
    base, _, k = name.partition("@")
    if base in RATING_METRICS:
        return (split, 0, 0, RATING_METRICS.index(base), "")
    if k:
        rank = RANK_ORDER.index(base) if base in RANK_ORDER else len(RANK_ORDER)
        return (split, 1, int(k) if k.isdigit() else math.inf, rank, base)
    return (split, 2, 0, 0, base)


def _row(path: Path, d: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {k: d.get(k) or "" for k in ("model", "loss", "data", "split")} | {"seed": d.get("seed")}
    if d.get("future_item_features"):  # model.allow_future_item_features: not comparable with the other rows
        row["model"] = f"{row['model']} (future item features)"
    key = d.get("config_key")
    row["config_key"] = key if isinstance(key, str) else config_key(d.get("overrides") or [])
    for part in ("test", "val"):
        for k, v in (d.get(part) or {}).items():
            row[k if k.startswith(f"{part}/") else f"{part}/{k}"] = v
    row.update({k: d.get(k) for k in (*EXTRAS, "monitor", "monitor_mode", "split_fingerprint")})
    row["run_dir"] = str(path.parent)
    return row


def load_runs(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per run; unreadable or foreign files are skipped with a warning, so one crashed
    job (half-written JSON) does not cost the whole sweep its leaderboard."""
    rows = []
    for path in find_metrics(paths):
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable %s: %s", path, e)
            continue
        if not isinstance(d, dict) or d.get("format_version") != METRICS_FORMAT_VERSION:
            version = d.get("format_version", "missing") if isinstance(d, dict) else "not an object"
            log.warning("skipping %s: format_version %s, expected %s", path, version, METRICS_FORMAT_VERSION)
            continue
        rows.append(_row(path, d))
    df = pd.DataFrame(rows, columns=None if rows else [*KEYS, "seed", *EXTRAS, "run_dir"])
    metrics = sorted((c for c in df.columns if c.startswith(("test/", "val/"))), key=_metric_key)
    for c in [*metrics, *EXTRAS]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    front = ["model", "loss", "data", "split", "seed", "config_key", *metrics, *EXTRAS]
    return df[front + [c for c in df.columns if c not in front and c != "run_dir"] + ["run_dir"]]


def load_failures(paths: Iterable[Path]) -> pd.DataFrame:
    """One row per failed job (its ``error.json``, written by :func:`recarena.run.train_job`) under the given
    dirs: model, loss, data, split, seed, config_key, error, run_dir. A dir that also holds a finished run is not
    a failure."""
    rows = []
    for p in map(Path, paths):
        for path in sorted(p.rglob(ERROR_FILE)) if p.is_dir() else []:
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.warning("skipping unreadable %s: %s", path, e)
                continue
            if (path.parent / METRICS_FILE).is_file() or not isinstance(d, dict):
                continue
            rows.append({**{k: d.get(k) or "" for k in ("model", "loss", "data", "split")}, "seed": d.get("seed"),
                         "config_key": d.get("config_key") or config_key(d.get("overrides") or []),
                         "status": "failed", "error": d.get("error", ""), "run_dir": str(path.parent)})  # fmt: skip
    return pd.DataFrame(rows, columns=[*KEYS, "seed", "status", "error", "run_dir"])


def failure_lines(failures: pd.DataFrame) -> list[str]:
    """The failed jobs as paragraphs of the markdown / HTML leaderboard."""
    if failures.empty:
        return []
    head = f"{len(failures)} job{'s' if len(failures) > 1 else ''} failed (no metrics; the error is in its error.json):"
    return [head, *(f"- failed: `{r.config_key or r.model}` seed {r.seed}: {r.error}" for r in failures.itertuples())]


def _default_primary(runs: pd.DataFrame, metrics: list[str]) -> str:
    """The test twin of the monitored validation metric: what early stopping optimised."""
    monitors = runs["monitor"].dropna() if "monitor" in runs else pd.Series(dtype=object)
    candidates = []
    if len(monitors):
        candidates += [f"test/{str(monitors.iloc[0]).rpartition('/')[2]}", str(monitors.iloc[0])]
    candidates += [m for m in metrics if m.startswith("test/") and m.rpartition("/")[2] not in COUNTS]
    return next((c for c in candidates if c in metrics), metrics[0])


def leaderboard(runs: pd.DataFrame, primary: str | None = None) -> pd.DataFrame:
    """One row per configuration: ``n_seeds`` (runs aggregated), ``<metric>_mean`` and
    ``<metric>_std`` (ddof=1, NaN for a single seed), sorted best first by ``primary``,
    which is also kept in ``.attrs["primary"]``.

    Where the runs have a ``run_dir``, also :data:`significance.COLUMNS`: each row tested against
    the best row on the primary metric's validation twin (``.attrs["reference"]``, its index), per user, from
    the runs' ``per_user_metrics.parquet``; ``.attrs["significance_note"]`` says what was tested."""
    metrics = [c for c in runs.columns if c.startswith(("test/", "val/")) or c in TIMES]
    if runs.empty or not metrics:
        return pd.DataFrame(columns=[*KEYS, "n_seeds"])
    primary = primary or _default_primary(runs, metrics)
    if primary not in metrics:
        raise ValueError(f"unknown primary metric {primary!r}; have {metrics}")
    g = runs.sort_values(KEYS, kind="stable").groupby(KEYS, sort=False, dropna=False)
    agg = g[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    board = pd.concat([g.size().rename("n_seeds"), agg], axis=1).reset_index()
    board = board.sort_values(f"{primary}_mean", ascending=lower_is_better(primary),
                              na_position="last", kind="stable").reset_index(drop=True)
    board.attrs["primary"] = primary
    if "run_dir" in runs:
        sig, note = significance.significance(board, runs, KEYS, primary, lower_is_better(primary))
        board = pd.concat([board, sig], axis=1)
        board.attrs.update(primary=primary, reference=sig.attrs["reference"], significance_note=note)
    return board


def common_overrides(keys: pd.Series) -> list[str]:
    """Overrides every configuration shares (e.g. the dataset of the whole sweep): said once, above the table."""
    sets = [set(str(k or "").split()) for k in keys]
    if not sets:
        return []
    return sorted(set.intersection(*sets))


def _short_override(override: str) -> str:
    """``key=value`` with a float value shown to 4 significant digits (Optuna's trials carry full floats)."""
    key, sep, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}{sep}{number:.4g}" if sep and "." in value else override


def _display(board: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Headers, cells and bold flags shared by the markdown and the rich table. A single seed
    shows the mean alone (no '± nan'); a metric a model does not report is an empty cell."""
    metrics = [c[: -len("_mean")] for c in board.columns if c.endswith("_mean")]
    if board.attrs.get("columns"):  # --columns: these metrics, in this order
        shown = chosen_columns(board, board.attrs["columns"])
    else:
        scores = [m for m in metrics if m not in TIMES and m.rpartition("/")[2] not in COUNTS]
        shown = sorted([m for m in scores if m.startswith("test/")] or scores, key=_metric_key)
        shown += ["wall_seconds"] if "wall_seconds" in metrics else []
    headers = ["configuration", "model", "loss", "data", "split", "n_seeds", *shown]
    common = common_overrides(board["config_key"])
    cells = []
    for r in board.itertuples():
        own = " ".join(_short_override(o) for o in str(r.config_key or "").split() if o not in common)
        cells.append([f"`{own}`" if own else "(common only)", r.model, r.loss, r.data, r.split, str(r.n_seeds)])
    bold = [[False] * len(headers) for _ in cells]
    for j, m in enumerate(shown, start=6):
        mean, std = board[f"{m}_mean"], board[f"{m}_std"]
        best = mean.min() if lower_is_better(m) else mean.max()
        for i in range(len(board)):
            mu, sd = mean.iloc[i], std.iloc[i]
            fmt = "{:.1f}" if m.endswith("seconds") else "{:.3f}"
            text = "" if pd.isna(mu) else fmt.format(mu) + ("" if pd.isna(sd) else " ± " + fmt.format(sd))
            cells[i].append(text)
            bold[i][j] = m not in TIMES and mean.notna().sum() > 1 and pd.notna(mu) and math.isclose(mu, best)
    if board.attrs.get("reference") is not None:  # the paired test's cells right after the metric it tests
        primary = board.attrs.get("primary")
        at = headers.index(primary) + 1 if primary in headers else len(headers)
        headers[at:at] = SIGNIFICANCE_HEADERS
        for i, row, flags in zip(board.index, cells, bold, strict=True):
            row[at:at] = _significance_cells(board.loc[i], i == board.attrs["reference"])
            flags[at:at] = [False] * len(SIGNIFICANCE_HEADERS)
    return headers, cells, bold


def chosen_columns(board: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """``--columns ndcg@10 recall@20 rmse`` as the board's metric names (a bare name is the test metric:
    ``test/ndcg@10``; ``val/...`` and ``wall_seconds`` as written); an unknown one is refused, listing the known."""
    known = [c[: -len("_mean")] for c in board.columns if c.endswith("_mean")]
    chosen = [c if "/" in c or c in TIMES or c in EXTRAS else f"test/{c}" for c in columns]
    unknown = [c for c, full in zip(columns, chosen, strict=True) if full not in known]
    if unknown:
        names = sorted({k.removeprefix("test/") for k in known if k.rpartition("/")[2] not in COUNTS},
                       key=lambda k: _metric_key(k if "/" in k else f"test/{k}"))  # fmt: skip
        raise ConfigError(f"--columns: unknown metric {', '.join(unknown)}; known: {', '.join(names)}.")
    return chosen


def leaderboard_latex(board: pd.DataFrame) -> str:
    """The leaderboard as a booktabs ``tabular`` for a paper: one row per configuration, each metric as
    mean ± std, the best in bold, and a dagger on the primary metric where the paired test against the reference
    row is significant after Holm's correction (the reference row marked ``ref``)."""
    headers, cells, bold = _display(board)
    if board.attrs.get("reference") is not None:  # the dagger replaces the three significance columns
        at = headers.index(SIGNIFICANCE_HEADERS[0])
        significant = [row[at + 2] == "yes" for row in cells]
        primary = headers.index(board.attrs["primary"]) if board.attrs.get("primary") in headers else None
        reference = [row[at] == "ref" for row in cells]
        headers = headers[:at] + headers[at + 3 :]
        cells = [row[:at] + row[at + 3 :] for row in cells]
        bold = [flags[:at] + flags[at + 3 :] for flags in bold]
    else:
        significant, primary, reference = [False] * len(cells), None, [False] * len(cells)
    keep = [0, 5, *range(6, len(headers))]  # configuration, seeds, metrics (model/loss/... are in the key)
    lines = [r"\begin{tabular}{l" + "r" * (len(keep) - 1) + "}", r"\toprule",
             " & ".join(_latex_header(headers[j]) for j in keep) + r" \\", r"\midrule"]  # fmt: skip
    for i, (row, flags) in enumerate(zip(cells, bold, strict=True)):
        texts = []
        for j in keep:
            text = _latex_text(row[j].strip("`")) if j == 0 else row[j].replace(" ± ", r" $\pm$ ")
            text = rf"\textbf{{{text}}}" if flags[j] and text else text
            if j == primary and (significant[i] or reference[i]):
                text += r"$^{\dagger}$" if significant[i] else " (ref)"
            texts.append(text)
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = (f"% mean ± std over seeds; bold: best per metric; dagger: p < 0.05 (Holm) against the ref row on "
            f"{board.attrs.get('primary', '?')}. Needs \\usepackage{{booktabs}}.")  # fmt: skip
    return "\n".join([note, *lines]) + "\n"


def _latex_text(text: str) -> str:
    """Escape LaTeX's special characters in a configuration key."""
    return "".join(LATEX_ESCAPES.get(char, char) for char in text)


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def _latex_header(header: str) -> str:
    return "seeds" if header == "n_seeds" else _latex_text(header.removeprefix("test/"))


#: Table headers of the paired test's columns (:func:`leaderboard`, :mod:`recarena.significance`).
SIGNIFICANCE_HEADERS = ["Δ vs ref", "p (Holm)", "significant"]


def _significance_cells(row: pd.Series, reference: bool) -> list[str]:
    """``ref`` on the reference row; empty cells where a row could not be paired."""
    if reference:
        return ["ref", "", ""]
    if pd.isna(row["p_value"]):
        return ["", "", ""]
    p = row["p_value"]
    p_text = f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"
    return [f"{row['diff_vs_best']:+.4f}", p_text, "yes" if row["significant"] else "no"]


def _intro(board: pd.DataFrame) -> list[str]:
    """The paragraphs above the table (markdown inline code; the HTML page renders the backticks)."""
    common = common_overrides(board["config_key"])
    primary = board.attrs.get("primary", "?")
    way = "lower" if lower_is_better(primary) else "higher"
    return [
        f"{int(board['n_seeds'].sum())} runs in {len(board)} configurations. Each cell is mean ± std "
        "(ddof=1) over the seeds of a configuration; a single seed shows its value alone. "
        f"Sorted by `{primary}` ({way} is better); best per metric in **bold**; empty = not reported.",
        *([board.attrs["significance_note"]] if board.attrs.get("significance_note") else []),
        *([f"Overrides shared by every configuration: `{' '.join(common)}`"] if common else []),
        *board.attrs.get("failures", []),
    ]


def leaderboard_markdown(board: pd.DataFrame) -> str:
    """The leaderboard as a markdown table with a header line saying what was aggregated."""
    headers, cells, bold = _display(board)
    lines = [
        "# Leaderboard", "",
        *[line for paragraph in _intro(board) for line in (paragraph, "")],
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if j < 5 else "---:" for j in range(len(headers))) + "|",
    ]
    for row, flags in zip(cells, bold, strict=True):
        row = [c.replace("|", "\\|") for c in row]
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(row, flags, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def leaderboard_table(df: pd.DataFrame) -> Table:
    """Rich rendering for the terminal; accepts a leaderboard or the per-run frame.

    Terminals are narrow: identity columns shared by every row go to the title, only the main metrics are shown
    (the markdown and CSV hold all of them), and cells fold instead of being cut.
    """
    board = df if "n_seeds" in df.columns else leaderboard(df)
    headers, cells, bold = _display(board)
    same = {j: cells[0][j] for j in range(1, 5) if len({r[j] for r in cells}) == 1}
    if all(r[0] == "(common only)" for r in cells):
        same[0] = ""
    keep = [j for j in range(len(headers)) if j not in same and (j < 6 or _terminal_metric(headers[j], board))]
    note = "".join(f", {headers[j]}={v}" for j, v in same.items() if j)
    table = Table(title=f"Leaderboard (sorted by {board.attrs.get('primary', '?')}{note})")
    for j in keep:
        short = headers[j].removeprefix("test/").replace("n_seeds", "n").replace("wall_seconds", "wall s")
        table.add_column(short, justify="right" if j >= 5 else "left", overflow="fold")
    for row, flags in zip(cells, bold, strict=True):  # Text, not markup: overrides may hold '[...]'
        table.add_row(*(Text(row[j].strip("`"), style="bold" if flags[j] else "") for j in keep))
    return table


#: The metrics a terminal has room for; the markdown and CSV carry all of them.
TERMINAL_METRICS = ("rmse", "mae", "ndcg", "recall", "hit_rate", "coverage")


def _terminal_metric(header: str, board: pd.DataFrame) -> bool:
    """Rating errors and the main ranking metrics at the smallest K, the primary metric, wall time and the
    paired test's p-value."""
    if header in (board.attrs.get("primary"), "wall_seconds", "p (Holm)"):
        return True
    base, _, k = header.rpartition("/")[2].partition("@")
    ks = [int(c.split("@")[1].split("_")[0]) for c in board.columns if "@" in c and c.split("@")[1][0].isdigit()]
    return base in TERMINAL_METRICS and (not k or not ks or int(k) == min(ks))


def _atomic_write(path: Path, text: str) -> None:
    """A reader never sees a half-written leaderboard."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_leaderboard(sweep_dir: Path, runs: pd.DataFrame | None = None, primary: str | None = None,
                      html: bool = True, columns: Sequence[str] | None = None) -> list[Path]:
    """Write ``leaderboard.csv`` (per run, leaderboard order, with its configuration's paired-test columns),
    ``leaderboard.md`` (per config) and, with ``html``, ``leaderboard.html`` and its PNG plots; returns the
    paths written, csv and md first."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs([sweep_dir]) if runs is None else runs
    failures = load_failures([sweep_dir])
    csv, md = sweep_dir / "leaderboard.csv", sweep_dir / "leaderboard.md"
    if runs.empty and not failures.empty:  # every job failed: the reports say so
        _atomic_write(csv, failures.to_csv(index=False, lineterminator="\n"))
        _atomic_write(md, "\n".join(["# Leaderboard", "", *failure_lines(failures)]) + "\n")
        return [csv, md]
    if runs.empty:
        raise FileNotFoundError(f"no usable metrics.json under {sweep_dir}")
    board = leaderboard(runs, primary)
    board.attrs["failures"] = failure_lines(failures)
    board.attrs["columns"] = list(columns or [])
    rank = {tuple(r): i for i, r in enumerate(board[KEYS].itertuples(index=False))}
    order = runs[KEYS].apply(lambda r: rank.get(tuple(r), len(rank)), axis=1)
    per_run = runs.assign(_rank=order).sort_values(["_rank", "seed"], kind="stable").drop(columns="_rank")
    if board.attrs.get("reference") is not None:  # each run carries its configuration's test, before run_dir
        front = [c for c in per_run.columns if c != "run_dir"]
        per_run = per_run.merge(board[[*KEYS, *significance.COLUMNS]], on=KEYS, how="left")
        per_run = per_run[[*front, *significance.COLUMNS, "run_dir"]]
    per_run = per_run.drop(columns=["monitor", "monitor_mode"], errors="ignore")
    if not failures.empty:  # failed jobs are rows too, with their error
        per_run = pd.concat([per_run.assign(status="finished"), failures], ignore_index=True)
    _atomic_write(csv, per_run.to_csv(index=False, lineterminator="\n"))
    _atomic_write(md, leaderboard_markdown(board))
    if not html:
        return [csv, md]
    from recarena.report_html import write_html

    headers, cells, bold = _display(board)
    page = write_html(sweep_dir, board, runs, (headers, cells, bold), _intro(board), _plot_metrics(board))
    return [csv, md, *page]


def _plot_metrics(board: pd.DataFrame) -> list[str]:
    """The metrics of the bar plot: the primary one, then RMSE and NDCG/recall at the smallest K if reported."""
    primary = board.attrs.get("primary")
    ks = sorted({int(c.split("@")[1].split("_")[0]) for c in board.columns if c.startswith("test/ndcg@")})
    extra = ["test/rmse", *([f"test/ndcg@{ks[0]}", f"test/recall@{ks[0]}"] if ks else [])]
    chosen = [m for m in [primary, *extra] if m and f"{m}_mean" in board and board[f"{m}_mean"].notna().any()]
    return list(dict.fromkeys(chosen))[:3]


class LeaderboardCallback(Callback):
    """Hydra callback: the leaderboard is refreshed after every job of a multirun (so a sweep
    that dies half-way still has one) and written and printed once the multirun ends; with ``logger=wandb``
    it is also logged to a W&B run of the sweep's group (:func:`recarena.wandb_report.log_sweep_leaderboard`)."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        # Every task of a multi-task SLURM job runs the job; rank 0's writes its run dir, and the interim board.
        if str(OmegaConf.select(config, "hydra.mode")).endswith("MULTIRUN") and process_rank() == 0:
            self._write(config, final=False)  # md + csv only: the plots (seconds) are drawn once, at the end

    #: Failed jobs (their error.json) found when the last multirun ended: ``train.py`` then exits 1.
    failed_jobs: ClassVar[list[str]] = []

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(config, final=True)
        failures = load_failures([Path(str(config.hydra.sweep.dir))])
        LeaderboardCallback.failed_jobs = list(failures["run_dir"])
        for row in failures.itertuples():
            log.error("job %s failed: %s", row.run_dir, row.error)

    def _write(self, config: DictConfig, final: bool) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            runs = load_runs([sweep_dir])
            if runs.empty and load_failures([sweep_dir]).empty:
                (log.warning if final else log.debug)("no metrics.json under %s: no leaderboard", sweep_dir)
                return
            written = write_leaderboard(sweep_dir, runs, html=final)
            if runs.empty:  # every job failed: the leaderboard lists them, there is nothing to rank
                return
            if final:
                board = leaderboard(runs)
                Console().print(leaderboard_table(board))
                log.info("leaderboard: %s", ", ".join(map(str, written)))
        except Exception:  # a report bug must not turn a finished sweep into a failed one
            log.exception("could not write the leaderboard of %s", sweep_dir)
            return
        if final:
            try:  # logger=wandb: the leaderboard as a table in a W&B run of the sweep's project and group
                from recarena.wandb_report import log_sweep_leaderboard

                log_sweep_leaderboard(config, sweep_dir, board)
            except Exception:
                log.exception("could not log the leaderboard of %s to W&B", sweep_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recarena.report PATH... [--out DIR] [--primary METRIC]``: rebuild leaderboards."""
    parser = argparse.ArgumentParser(prog="python -m recarena.report", description=main.__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="run dirs, sweep dirs or metrics.json files")
    parser.add_argument("--out", type=Path, help="where to write (default: the single PATH, or its dir)")
    parser.add_argument("--primary", help="metric to sort by (default: test twin of the monitor)")
    parser.add_argument("--columns", nargs="+", help="metrics to show, e.g. ndcg@10 recall@20 rmse (test/...)")
    parser.add_argument("--latex", type=Path, help="also write the table as a booktabs tabular to this file")
    parser.add_argument("--markdown", type=Path, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        return _rebuild(parser, args)


def _rebuild(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    one = args.paths[0] if len(args.paths) == 1 else None
    if (out := args.out or (one and (one if one.is_dir() else one.parent))) is None:
        parser.error("--out is required with several paths")
    runs = load_runs(args.paths)
    if runs.empty:
        log.error("no usable metrics.json under %s", " ".join(map(str, args.paths)))
        return 1
    board = leaderboard(runs, args.primary)
    board.attrs["columns"] = list(args.columns or [])
    if args.columns:
        chosen_columns(board, args.columns)  # an unknown name fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = write_leaderboard(out, runs, args.primary, columns=args.columns)
    for path, text in ((args.latex, leaderboard_latex), (args.markdown, leaderboard_markdown)):
        if path is not None:
            _atomic_write(path, text(board))
            written.append(path)
    Console().print(leaderboard_table(board), *(f"wrote {p}" for p in written), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
