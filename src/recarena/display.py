"""Rich tables printed at the start (dataset and split statistics) and end (metrics) of a run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()

PARTS = ("train", "val", "test")


def stats_table(data: str, split: str, stats: dict[str, Any]) -> Table:
    """Dataset size and, per part of the split, ratings/users/items and the cold users and items."""
    table = Table(
        title=f"{data} · {stats['users']:,} users · {stats['items']:,} items · {stats['ratings']:,} ratings · "
        f"density {stats['density']:.4%}",
        caption=f"split={split} · fingerprint {stats.get('fingerprint', '?')}",
        title_justify="left",
    )
    for column in ("part", "ratings", "share", "users", "items", "cold users", "cold items"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in (p for p in (*PARTS, "known") if p in stats):
        row = stats[part]
        share = row.get("ratings", 0) / max(stats["ratings"], 1)
        cells = [f"{row.get(key, 0):,}" for key in ("ratings", "users", "items", "cold_users", "cold_items")]
        table.add_row(part, cells[0], f"{share:.1%}", *cells[1:])
    return table


def print_stats(data: str, split: str, stats: dict[str, Any]) -> None:
    console.print(stats_table(data, split, stats))
    dropped, dupes = stats.get("dropped_rows", 0), stats.get("duplicate_rows", 0)
    if dropped or dupes:
        console.print(f"[yellow]cleaning: dropped {dropped:,} incomplete rows, {dupes:,} duplicate ratings[/]")


def metrics_table(result: dict[str, Any]) -> Table:
    """Validation (best checkpoint) and test metrics side by side, one metric per row."""
    table = Table(
        title=f"{result['model']} · {result['loss']} · {result['data']} · {result['split']} · seed {result['seed']}",
        caption=f"best epoch {result['best_epoch']} of {result['epochs']} · {result['wall_seconds']:.1f} s",
        title_justify="left",
    )
    table.add_column("metric")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    names = sorted({k.split("/", 1)[1] for part in ("val", "test") for k in result[part]}, key=_metric_order)
    for name in names:
        table.add_row(name, *(_fmt(result[part].get(f"{part}/{name}")) for part in ("val", "test")))
    return table


def print_metrics(result: dict[str, Any]) -> None:
    console.print(metrics_table(result))


def _metric_order(name: str) -> tuple[int, int, str]:
    """rmse, mae first; then ranking metrics grouped by K; counts last."""
    if name in ("rmse", "mae"):
        return (0, 0, name)
    if "@" in name:
        base, k = name.split("@", 1)
        return (1, int(k) if k.isdigit() else 0, base)
    return (2, 0, name)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.4f}"
