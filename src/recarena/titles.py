"""Movies named by title or id, as users write them: ``"Silence of the Lambs, The (1991)"``, ``"toy story"``, or a
MovieLens movie id. Pandas only (no torch): the model path (:mod:`recarena.inference`) and the export path
(:mod:`recarena.serving`) of the commands resolve movies with the same rules and the same error messages."""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd

from recarena.errors import RunError


def display_titles(items: pd.DataFrame) -> pd.Series:
    """``"Title (Year)"`` as MovieLens writes it; the title alone when the year is unknown."""
    year = items["year"].astype("string")
    title = items["title"].astype("string")
    return (title + " (" + year + ")").fillna(title)


def resolve_movie(
    items: pd.DataFrame, title: str | None = None, movie_id: int | None = None, where: str = "",
    by_id: str = "--movie-id ID, or movie_id=ID",
) -> int:  # fmt: skip
    """Row (item index) of ``items`` (``movie_id``, ``title``, ``year`` per item index: a corpus's ``item_table``
    or an export's ``items.parquet``) of a movie given as ``"Title (Year)"`` (case-insensitive; a title without the
    year when it is unique) or as a MovieLens movie id. No match: an error with up to three close titles; several: an error
    listing them with their ids (and ``by_id``, how to give a movie by its id)."""
    where = f" in {where}" if where else ""
    if (title is None) == (movie_id is None):
        raise RunError("give a movie as a title or as a movie id (one of the two)")
    ids = items["movie_id"].to_numpy()
    if movie_id is not None:
        hits = np.flatnonzero(ids == int(movie_id))
        if not len(hits):
            raise RunError(f"movie id {movie_id} is not in the catalogue{where} (ids run from {ids.min()} to {ids.max()})")
        return int(hits[0])
    display = display_titles(items).fillna("")
    folded = display.str.casefold()
    wanted = " ".join(str(title).split()).casefold()
    hits = np.flatnonzero((folded == wanted).to_numpy())
    if not len(hits):  # "Toy Story" for "Toy Story (1995)" when only one movie has that title
        hits = np.flatnonzero((items["title"].astype("string").str.casefold() == wanted).to_numpy())
    if len(hits) == 1:
        return int(hits[0])
    if len(hits) > 1:
        listing = "; ".join(f"{display.iloc[i]} (id {ids[i]})" for i in hits[:10])
        raise RunError(f"{title!r} matches {len(hits)} movies{where}: {listing}; pick one by its id ({by_id})")
    unique = dict(zip(folded, display, strict=True))
    close = [unique[m] for m in difflib.get_close_matches(wanted, list(unique), n=3, cutoff=0.6)]
    quoted = ", ".join(f'"{t}"' for t in close)  # quoted: titles such as "Lambs, The (1991)" hold commas
    hint = f"did you mean: {quoted}?" if close else 'titles are written "Title (Year)", e.g. "Toy Story (1995)"'
    raise RunError(f"no movie titled {title!r}{where}; {hint}")
