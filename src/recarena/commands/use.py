"""``recarena recommend RUN_DIR --user 196 -k 10`` and ``recarena similar RUN_DIR "Title (Year)" -k 10``.

Argument parsing and printing only: loading and ranking are :mod:`recarena.inference`'s. Torch, Lightning and
Rich are imported after the arguments are parsed, so ``--help`` answers at once. A user error (unknown user or
title, no checkpoint, k <= 0) ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMATS = ("table", "json", "csv")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recarena", description="use a trained run")
    sub = parser.add_subparsers(dest="command", required=True)
    recommend = sub.add_parser("recommend", help="top-K movies a user of the training data has not rated")
    recommend.add_argument("run_dir", type=Path, help="a run dir written by train.py")
    recommend.add_argument("--user", type=int, required=True, help="user id as in the MovieLens files")
    similar = sub.add_parser("similar", help="movies nearest to one by the family's item embeddings (cosine)")
    similar.add_argument("run_dir", type=Path, help="a run dir written by train.py")
    similar.add_argument("title", nargs="?", help='"Title (Year)", case-insensitive')
    similar.add_argument("--movie-id", type=int, help="the movie by its MovieLens id instead of its title")
    similar.add_argument("--min-ratings", type=int, default=0, help="only movies with at least N training ratings")
    for command in (recommend, similar):
        command.add_argument("-k", type=int, default=10, help="how many movies (default 10)")
        command.add_argument("--format", choices=FORMATS, default="table", help="table (default), json or csv")
        command.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from recarena.cli_errors import exit_on_user_error  # imports torch (via the config checks)

    with exit_on_user_error(debug=args.debug):
        from recarena.inference import load_run

        run = load_run(args.run_dir)
        if args.command == "recommend":
            frame = run.recommend(user=args.user, k=args.k)
            title = f"top {args.k} for user {args.user}"
        else:
            frame = run.similar(args.title, k=args.k, min_ratings=args.min_ratings, movie_id=args.movie_id)
            query = args.title if args.title is not None else f"movie id {args.movie_id}"
            title = f"nearest to {query}" + (f" (>= {args.min_ratings} ratings)" if args.min_ratings else "")
        show(frame, args.format, f"{title} · model={run.family} · {run.path}")
    return 0


def show(frame: Any, fmt: str, title: str) -> None:
    """Print a frame of movies (movie_id, title, year, genres, score) as a Rich table, JSON records or CSV."""
    if fmt == "json":
        print(frame.to_json(orient="records", indent=2))
    elif fmt == "csv":
        frame.to_csv(sys.stdout, index=False)
    else:
        import pandas as pd
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column, justify in (("#", "right"), ("movie id", "right"), ("title", "left"), ("year", "right"),
                                ("genres", "left"), ("score", "right")):  # fmt: skip
            table.add_column(column, justify=justify, overflow="fold")
        for row in frame.itertuples(index=False):
            year = "" if pd.isna(row.year) else str(row.year)
            table.add_row(str(row.rank), str(row.movie_id), row.title, year, row.genres, f"{row.score:.4f}")
        Console().print(table)
