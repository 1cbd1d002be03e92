"""``recarena evaluate RUN_DIR --ks 5 10 50 --threshold 3``, ``recarena explain RUN_DIR`` and
``recarena export RUN_DIR``.

Argument parsing and printing only: the work is :mod:`recarena.inspection`'s. As in :mod:`recarena.commands.use`,
torch and Rich are imported after the arguments are parsed, and a user error (no run dir, ``k <= 0``, a family
without what the command needs) ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recarena.atomic import strict_json_value
from recarena.commands.use import FORMATS, show


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recarena", description="look into a trained run")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate = sub.add_parser("evaluate", help="re-score a run on its own split with other evaluation settings")
    evaluate.add_argument("--ks", nargs="*", metavar="K", help="cut-offs (default: the run's eval.ks)")
    evaluate.add_argument("--threshold", help="held-out ratings >= this are relevant; 'none': every held-out item "
                                              "(default: the run's eval.relevance_threshold)")  # fmt: skip
    evaluate.add_argument("--part", choices=("test", "val"), default="test", help="test (default) or val")
    explain = sub.add_parser("explain", help="item biases and a PCA plot of the item vectors")
    explain.add_argument("--top", type=int, default=10, help="movies per side of the bias table (default 10)")
    explain.add_argument("--min-ratings", type=int, default=20,
                         help="only movies with at least N training ratings (default 20)")  # fmt: skip
    explain.add_argument("--labels", type=int, default=30, help="most-rated titles labelled in the plot (default 30)")
    explain.add_argument("--out", type=Path, help="where item_pca.png goes (default RUN_DIR/explain)")
    export = sub.add_parser("export", help="user and item embeddings to parquet for a nearest-neighbour index")
    export.add_argument("--out", type=Path, help="output dir (default RUN_DIR/export)")
    for command in (evaluate, explain, export):
        command.add_argument("run_dir", type=Path, help="a run dir written by train.py")
        command.add_argument("--debug", action="store_true", help="show the traceback of an error")
    for command in (evaluate, explain):
        command.add_argument("--format", choices=FORMATS, default="table", help="table (default), json or csv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from recarena.cli_errors import exit_on_user_error

    with exit_on_user_error(debug=args.debug):
        from recarena import inspection
        from recarena.inference import load_run

        if args.command == "evaluate":  # check the settings before the run is loaded
            ks = None if args.ks is None else inspection.check_cutoffs([_number(k, int, "cut-off K") for k in args.ks])
            threshold = inspection.RUN_SETTING if args.threshold is None else _threshold(args.threshold)
        run = load_run(args.run_dir)
        if args.command == "evaluate":
            metrics = inspection.evaluate(run, ks, threshold, args.part)
            if threshold is inspection.RUN_SETTING:
                threshold = run.config.eval.relevance_threshold
            _print_metrics(run, metrics, args.part, threshold, args.format)
        elif args.command == "explain":
            result = inspection.explain(run, args.out, args.top, args.min_ratings, args.labels)
            _print_explanation(run, result, args.min_ratings, args.format)
        else:
            manifest = inspection.export(run, args.out)
            out = Path(args.out or run.path / "export")
            print(f"wrote {manifest['users']['rows']:,} users and {manifest['items']['rows']:,} movies "
                  f"({manifest['dim']}-d, {manifest['similarity']}) to {out}/users.parquet, items.parquet, "
                  "manifest.json")  # fmt: skip
    return 0


def _number(text: str, kind: type, what: str) -> Any:
    from recarena.errors import RunError

    try:
        return kind(text)
    except ValueError:
        raise RunError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _threshold(text: str) -> float | None:
    return None if text.strip().lower() in {"none", "null"} else _number(text, float, "--threshold")


def _print_metrics(run: Any, metrics: dict[str, float], part: str, threshold: Any, fmt: str) -> None:
    """One row per metric and a column per K (table); the dict with the settings (json); metric,value (csv)."""
    ks = sorted({int(name.split("@")[1]) for name in metrics if "@" in name})
    if fmt == "json":
        settings = {"run_dir": str(run.path), "model": run.family, "part": part, "ks": ks, "relevance_threshold": threshold}
        print(json.dumps(strict_json_value({**settings, "metrics": metrics}), indent=2, allow_nan=False))
        return
    if fmt == "csv":
        print("metric,value\n" + "\n".join(f"{name},{value!r}" for name, value in metrics.items()))
        return
    from recarena.display import _fmt

    names = list(dict.fromkeys(name.split("@")[0] for name in metrics if "@" in name))
    grid = {"metric": names, **{f"@{k}": [_fmt(metrics[f"{name}@{k}"]) for name in names] for k in ks}}
    relevant = "every held-out item relevant" if threshold is None else f"relevant: rating >= {threshold:g}"
    _print_table(grid, f"{part} · model={run.family} · {relevant}")
    print(" · ".join(f"{name} {_fmt(value)}" for name, value in metrics.items() if "@" not in name))


def _print_explanation(run: Any, result: dict[str, Any], min_ratings: int, fmt: str) -> None:
    biases = result["biases"]
    from recarena.inference import families_that
    from recarena.inspection import has_item_biases

    note = f"model={run.family} has no item biases (families with: {families_that(has_item_biases)})"
    pca = (f"item PCA of {result['pca_movies']} movies (PC1 {result['pca_variance'][0]:.0%}, PC2 "
           f"{result['pca_variance'][1]:.0%} of variance): {result['pca']}")  # fmt: skip
    if fmt == "json":
        records = None if biases is None else json.loads(biases.to_json(orient="records"))
        payload = {"biases": records, "pca": str(result["pca"]), "pca_variance": result["pca_variance"],
                   "pca_movies": result["pca_movies"]}  # fmt: skip
        print(json.dumps(strict_json_value(payload), indent=2, allow_nan=False))
        return
    if fmt == "csv":  # the bias table to stdout, the rest to stderr
        if biases is not None:
            show(biases, "csv", "")
        print(pca if biases is not None else f"{note}\n{pca}", file=sys.stderr)
        return
    if biases is None:
        print(note)
    for side, words in (("top", "most"), ("bottom", "least")) if biases is not None else ():
        frame = biases[biases["side"] == side]
        grid = {
            "#": frame["rank"].astype(str), "movie id": frame["movie_id"].astype(str), "title": frame["title"],
            "year": frame["year"].astype("string").fillna(""), "genres": frame["genres"],
            "bias": frame["bias"].map("{:+.3f}".format), "ratings": frame["n_ratings"].map("{:,}".format),
            "mean rating": frame["mean_rating"].map("{:.2f}".format),
        }  # fmt: skip
        _print_table(grid, f"liked {words} whoever rates them: item biases of movies with >= {min_ratings} "
                           f"training ratings · model={run.family}")  # fmt: skip
    print(pca)


def _print_table(columns: dict[str, Any], title: str) -> None:
    """A Rich table of already formatted columns; text columns left-aligned, the others right."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    left = {"metric", "title", "genres"}
    for name in columns:
        table.add_column(name, justify="left" if name in left else "right", overflow="fold")
    for row in zip(*(list(values) for values in columns.values()), strict=True):
        table.add_row(*row)
    Console().print(table)
