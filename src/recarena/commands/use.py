"""``recarena recommend RUN_DIR --user 196 -k 10`` (or a made-up user: ``--liked "Toy Story (1995)" --likes-genre
Animation --dislikes-genre Horror``), ``recarena similar RUN_DIR "Title (Year)" -k 10`` and ``recarena search
RUN_DIR war violence drama -k 10``.

Argument parsing and printing only: loading and ranking are :mod:`recarena.inference`'s. Torch, Lightning and
Rich are imported after the arguments are parsed, so ``--help`` answers at once. A user error (unknown user, title or
genre, --user with made-up options, no checkpoint, k <= 0) ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
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
    recommend = sub.add_parser("recommend", help="top-K movies a user (of the training data, or made up) has not rated")
    recommend.add_argument("run_dir", type=Path, help="a run dir written by train.py")
    recommend.add_argument("--user", help="user id as in the ratings file (a number, or the text of a file with text ids)")
    made_up = recommend.add_argument_group("a made-up user (twotower, siamese), instead of --user")
    made_up.add_argument("--liked", action="append", default=[], metavar="TITLE", help='a liked "Title (Year)"')
    made_up.add_argument("--liked-id", action="append", default=[], type=int, metavar="ID", help="a liked movie id")
    made_up.add_argument("--likes-genre", action="append", default=[], metavar="GENRE", help="a liked genre")
    made_up.add_argument("--dislikes-genre", action="append", default=[], metavar="GENRE", help="a disliked genre")
    similar = sub.add_parser("similar", help="movies nearest to one by the family's item embeddings (cosine)")
    similar.add_argument("run_dir", type=Path, help="a run dir written by train.py")
    similar.add_argument("title", nargs="?", help='"Title (Year)", case-insensitive')
    similar.add_argument("--movie-id", type=int, help="the movie by its MovieLens id instead of its title")
    similar.add_argument("--min-ratings", type=int, default=0, help="only movies with at least N training ratings")
    search = sub.add_parser("search", help="movies nearest to keywords (siamese: genres, decades, tags)")
    search.add_argument("run_dir", type=Path, help="a run dir written by train.py")
    search.add_argument("keywords", nargs="+", help="words, e.g. war violence drama")
    for command in (recommend, similar, search):
        command.add_argument("-k", type=int, default=10, help="how many movies (default 10)")
        command.add_argument("--format", choices=FORMATS, default="table", help="table (default), json or csv")
        command.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from recarena.cli_errors import exit_on_user_error

    with exit_on_user_error(debug=args.debug):
        _check_before_loading(args)
        if _answer_from_export(args):  # a known user of a run with exported vectors: no torch, no Lightning
            return 0
        from recarena.inference import load_run

        if args.command == "recommend":
            made_up = {"liked": args.liked, "liked_ids": args.liked_id, "likes_genre": args.likes_genre,
                       "dislikes_genre": args.dislikes_genre}  # fmt: skip
            title = _recommend_title(args)  # checks --user against the made-up options before loading
        run = load_run(args.run_dir)
        if args.command == "recommend":
            frame = run.recommend(user=args.user, k=args.k) if args.user is not None else run.recommend(k=args.k, **made_up)
        elif args.command == "search":
            frame = run.search(args.keywords, k=args.k)
            title = f"search: {', '.join(frame.attrs.get('descriptors', args.keywords))}"
        else:
            frame = run.similar(args.title, k=args.k, min_ratings=args.min_ratings, movie_id=args.movie_id)
            title = _similar_title(args)
        show(frame, args.format, f"{title} · model={run.family} · {run.path}")
    return 0


def _check_before_loading(args: argparse.Namespace) -> None:
    """A bad k or a user id the run's corpus does not hold: one line before torch and Lightning are imported (the
    model path would take seconds to say the same)."""
    from recarena.errors import RunError
    from recarena.rundir import check_k, user_code, user_ids_of

    check_k(args.k)
    if args.command != "recommend" or args.user is None:
        return
    args.user = user_code(args.run_dir, args.user)  # the run's integer id (text ids through the saved map)
    ids = user_ids_of(args.run_dir)
    if ids is not None and args.user not in set(ids.tolist()):
        raise RunError(f"user {args.user} is not in the training data of {args.run_dir} "
                       f"(ids run from {ids.min()} to {ids.max()})")  # fmt: skip


def _answer_from_export(args: argparse.Namespace) -> bool:
    """``recommend --user ID`` and ``similar`` answered from ``RUN_DIR/export`` (:mod:`recarena.serving`) when it
    can; False sends the command down the model path, which also words every other error."""
    from recarena.serving import recommend_from_export, similar_from_export

    if args.command == "similar":
        answer = similar_from_export(args.run_dir, args.title, args.movie_id, args.k, args.min_ratings)
        if answer is None:
            return False
        frame, manifest = answer
        show(frame, args.format, f"{_similar_title(args)} · model={manifest['family']} · {args.run_dir}")
        return True
    if args.command != "recommend" or args.user is None:
        return False
    if args.liked or args.liked_id or args.likes_genre or args.dislikes_genre:  # refused by the model path
        return False
    answer = recommend_from_export(args.run_dir, args.user, args.k)
    if answer is None:
        return False
    frame, manifest = answer
    show(frame, args.format, f"top {args.k} for user {args.user} · model={manifest['family']} · {args.run_dir}")
    return True


def _similar_title(args: argparse.Namespace) -> str:
    query = args.title if args.title is not None else f"movie id {args.movie_id}"
    return f"nearest to {query}" + (f" (>= {args.min_ratings} ratings)" if args.min_ratings else "")


def _recommend_title(args: argparse.Namespace) -> str:
    """The table title of ``recommend``; --user and a made-up user's options together (or neither) are an error."""
    from recarena.errors import RunError

    liked = [*args.liked, *(f"id {i}" for i in args.liked_id)]
    parts = [("liked", liked), ("likes", args.likes_genre), ("dislikes", args.dislikes_genre)]
    stated = [f"{verb} {', '.join(map(str, values))}" for verb, values in parts if values]
    options = "--liked TITLE, --liked-id ID, --likes-genre GENRE, --dislikes-genre GENRE"
    if args.user is not None and stated:
        raise RunError(f"--user and a made-up user ({options}) exclude each other: give one of the two")
    if args.user is None and not stated:
        raise RunError(f"give --user ID, or a made-up user with {options}")
    return f"top {args.k} for user {args.user}" if args.user is not None else f"top {args.k} for a user who {'; '.join(stated)}"


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
