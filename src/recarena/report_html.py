"""``leaderboard.html``: the leaderboard table for people, with PNG plots beside it.

One self-contained page (inline CSS, no script, nothing fetched) that links three images written next to it,
so the sweep dir can be copied or served as is:

- ``leaderboard_metrics.png``: the headline metrics per configuration, bars at the mean over seeds with the
  standard deviation as error bars;
- ``leaderboard_curves.png``: training loss and the monitored validation metric per epoch, mean over each
  configuration's seeds, from each run's CSV logger file (``<run>/csv/metrics.csv``; other loggers: no plot);
- ``leaderboard_ndcg_at_k.png``: test NDCG@K against the evaluated cut-offs ``eval.ks``.

A plot that has nothing to show is not drawn (and a stale one from an earlier write is removed). matplotlib is
imported here only, when the page is written, and through its object API (``Figure`` renders with Agg), so
no global pyplot state or display backend is touched in the caller's process.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import html
import io
import json
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recarena.atomic import atomic_file
from recarena.evaluation.registry import metric_of
from recarena.record import KEYS, METRICS_FILE
from recarena.significance import runs_by_row, validation_twin

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HTML_FILE = "leaderboard.html"
PLOTS = {
    "metrics": ("leaderboard_metrics.png", "Mean over seeds with ± one standard deviation (ddof=1) as error bars."),
    "curves": ("leaderboard_curves.png", "Training loss and the monitored validation metric per epoch, mean over "
               "each configuration's seeds (from the runs' csv/metrics.csv)."),
    "ndcg_at_k": ("leaderboard_ndcg_at_k.png", "Test NDCG@K against K, mean ± std over seeds."),
}
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 96em;
       padding: 0 1em; color: #1d1d1f; }
div.wide { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .6em; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; white-space: normal; vertical-align: bottom; }
td.text, th.text { text-align: left; }
td.best { background: #e3f4e1; font-weight: 600; }
tr.reference td { border-top: 2px solid #6a6; border-bottom: 2px solid #6a6; }
code { background: #f4f4f6; padding: 0 .25em; border-radius: 3px; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, p.note { color: #555; }
"""


def write_html(out_dir: Path, board: pd.DataFrame, runs: pd.DataFrame,
               table: tuple[list[str], list[list[str]], list[list[bool]]], intro: list[str],
               bar_metrics: list[str]) -> list[Path]:
    """Write the plots and then ``leaderboard.html`` into ``out_dir``; returns [html, *pngs written].

    ``table`` is ``recarena.report._display(board)`` (headers, cell texts, best flags), ``intro`` the paragraphs
    above it (markdown inline code and bold), ``bar_metrics`` the metrics of the bar plot.
    """
    out_dir = Path(out_dir)
    headers, cells, bold = table
    labels = [f"{i + 1}. {_shorten(row[0].strip('`'))}" for i, row in enumerate(cells)]
    figures = {
        "metrics": _bars(board, bar_metrics, labels),
        "curves": _curves(board, runs, labels),
        "ndcg_at_k": _ndcg_at_k(board, labels),
    }
    written, shown = [], {}
    for name, fig in figures.items():
        path = out_dir / PLOTS[name][0]
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        with atomic_file(path, "wb") as handle:
            handle.write(png.getvalue())
        written.append(path)
        shown[name] = png.getvalue()
    page = out_dir / HTML_FILE
    with atomic_file(page, "w", encoding="utf-8") as handle:
        handle.write(_page(board, headers, cells, bold, [*intro, provenance(runs)], shown))
    return [page, *written]


def provenance(runs: pd.DataFrame) -> str:
    """Where the page comes from: when, by which command, on which machine, from which code and packages (the
    runs' own metrics.json record their versions and commit; several are listed when they differ)."""
    versions: dict[str, set[str]] = {}
    for run_dir in runs.get("run_dir", pd.Series(dtype=str)).dropna().unique():
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((Path(run_dir) / METRICS_FILE).read_text())
            versions.setdefault("git", set()).add(str(record.get("git_commit") or "?")[:10])
            for package, number in (record.get("versions") or {}).items():
                versions.setdefault(package, set()).add(str(number))
    wanted = ("git", "recarena", "torch", "lightning", "python")
    stated = ", ".join(f"{name} {'/'.join(sorted(versions[name]))}" for name in wanted if name in versions)
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "?"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Written {when} by `{command}` on {platform.node() or '?'} ({platform.platform(terse=True)}); "
            f"runs: {stated or 'no versions recorded'}.")  # fmt: skip


def _shorten(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** to HTML, everything else escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _page(board: pd.DataFrame, headers: list[str], cells: list[list[str]], bold: list[list[bool]],
          intro: list[str], plots: dict[str, bytes]) -> str:
    text_cols = {"configuration", "model", "loss", "data", "split"}
    head = "".join(f'<th class="{"text" if h in text_cols else "num"}">{html.escape(h).replace("/", "/<wbr>")}</th>'
                   for h in ["#", *headers])  # long metric names may break after the split's slash
    reference = board.attrs.get("reference")
    rows = []
    for i, (row, flags) in enumerate(zip(cells, bold, strict=True)):
        tds = [f'<td class="num">{i + 1}</td>']
        for h, cell, best in zip(headers, row, flags, strict=True):
            classes = ["text" if h in text_cols else "num", *(["best"] if best else [])]
            tds.append(f'<td class="{" ".join(classes)}">{_inline(cell)}</td>')
        ref = ' class="reference"' if reference is not None and board.index[i] == reference else ""
        rows.append(f"<tr{ref}>{''.join(tds)}</tr>")
    figures = [  # embedded: the page is one self-contained file (the PNGs are written beside it too)
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" data-file="{PLOTS[name][0]}" '
        f'alt="{name.replace("_", " ")} plot">'
        f"<figcaption>{html.escape(PLOTS[name][1])} Numbers are the table's rows.</figcaption></figure>"
        for name, png in plots.items()
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>recarena leaderboard</title><style>{CSS}</style></head><body>",
        "<h1>Leaderboard</h1>",
        *(f'<p class="note">{_inline(p)}</p>' for p in intro),
        f'<div class="wide"><table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>',
        *rows,
        "</tbody></table></div>",
        *(["<h2>Plots</h2>", *figures] if figures else []),
        "</body></html>",
        "",
    ])


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _bars(board: pd.DataFrame, metrics: list[str], labels: list[str]) -> Figure | None:
    """One panel per metric, one horizontal bar per configuration (table order, top to bottom)."""
    if not metrics or board.empty:
        return None
    y = np.arange(len(board))
    fig = _figure(3.6 * len(metrics) + 3.2, 0.4 * len(board) + 1.3)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        mean = board[f"{metric}_mean"].to_numpy(np.float64)
        std = np.nan_to_num(board[f"{metric}_std"].to_numpy(np.float64))  # one seed: no error bar
        ok = ~np.isnan(mean)  # a metric a family does not report: no bar
        ax.barh(y[ok], mean[ok], xerr=std[ok], capsize=3, color=[f"C{i % 10}" for i in y[ok]])
        if ok.any() and (kind := metric_of(metric)) is not None and kind.needs == "ratings":
            # Errors of a few hundredths apart (0.975 vs 0.992) are invisible on an axis from 0: zoom to the bars.
            low, high = float(np.min(mean[ok] - std[ok])), float(np.max(mean[ok] + std[ok]))
            pad = max(high - low, 1e-3) * 0.25
            ax.set_xlim(max(low - pad, 0.0), high + pad)
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    return fig


def _epoch_curves(run_dirs: list[str], monitor: str) -> tuple[pd.Series, pd.Series] | None:
    """Mean over runs of ``train/loss`` and of ``monitor`` per epoch, from the CSV logger files.

    A run's file holds one row per epoch for training and one for validation, then one validation row of the
    best checkpoint and one test row after fitting (at the epoch after the last): validation rows are kept
    only for epochs that trained. None when no run has a training curve (untrained families, other loggers).
    """
    train, val = [], []
    for run_dir in run_dirs:
        path = Path(run_dir) / "csv" / "metrics.csv"
        if not path.is_file():
            continue
        try:
            log = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if "train/loss" not in log or "epoch" not in log:
            continue
        t = log[["epoch", "train/loss"]].dropna()
        if t.empty:
            continue
        train.append(t)
        if monitor in log:
            val.append(log.loc[log["epoch"].isin(t["epoch"]), ["epoch", monitor]].dropna())
    if not train:
        return None
    mean_train = pd.concat(train).groupby("epoch")["train/loss"].mean()
    mean_val = pd.concat(val).groupby("epoch")[monitor].mean() if val else pd.Series(dtype=np.float64)
    return mean_train, mean_val


def _curves(board: pd.DataFrame, runs: pd.DataFrame, labels: list[str]) -> Figure | None:
    monitors = runs["monitor"].dropna() if "monitor" in runs else pd.Series(dtype=object)
    primary = str(board.attrs.get("primary", ""))
    monitor = str(monitors.mode().iloc[0]) if len(monitors) else validation_twin(primary)
    curves = [(i, c) for i, g in enumerate(runs_by_row(board, runs, KEYS))
              if "run_dir" in g and (c := _epoch_curves(list(g["run_dir"]), monitor)) is not None]
    if not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    # One training-loss panel per objective: a BPR loss and a squared error share no scale.
    losses = list(dict.fromkeys(str(board["loss"].iloc[i]) if "loss" in board else "" for i, _ in curves))
    fig = _figure(3.7 * (len(losses) + 1), 4.2)
    *loss_axes, val_ax = fig.subplots(1, len(losses) + 1)
    for i, (train, val) in curves:
        loss = str(board["loss"].iloc[i]) if "loss" in board else ""
        loss_axes[losses.index(loss)].plot(train.index, train.to_numpy(), marker=".", color=f"C{i % 10}",
                                           label=labels[i])  # fmt: skip
        if len(val):
            val_ax.plot(val.index, val.to_numpy(), marker=".", color=f"C{i % 10}", label=labels[i])
    titles = [f"train/loss (loss={loss})" if loss else "train/loss" for loss in losses]
    for ax, title in zip([*loss_axes, val_ax], [*titles, monitor], strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [h for ax in loss_axes for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncols=2, fontsize=8)
    return fig


def _ndcg_at_k(board: pd.DataFrame, labels: list[str]) -> Figure | None:
    ks = sorted(int(m.group(1)) for c in board.columns if (m := re.fullmatch(r"test/ndcg@(\d+)_mean", c)))
    if not ks:
        return None
    fig = _figure(7, 4.2)
    ax = fig.subplots()
    for i in range(len(board)):
        mean = np.array([board[f"test/ndcg@{k}_mean"].iloc[i] for k in ks], dtype=np.float64)
        std = np.nan_to_num(np.array([board[f"test/ndcg@{k}_std"].iloc[i] for k in ks], dtype=np.float64))
        if np.isnan(mean).all():
            continue
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, color=f"C{i % 10}", label=labels[i])
    ax.set_xticks(ks)
    ax.set_xlabel("K")
    ax.set_ylabel("test NDCG@K")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    return fig
