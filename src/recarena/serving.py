"""Answer ``recarena recommend RUN_DIR --user U`` from the run's exported vectors, without torch or Lightning.

Why a second path: importing Lightning (and through it torchmetrics and torch._dynamo) takes ~4 s on a 2-core
machine, more than the whole command may take (< 3 s). For the families whose ranking score is an inner product
of a user and an item vector (mf, twotower, siamese), training ends by exporting those vectors (``RUN_DIR/export``,
:func:`recarena.inspection.export`), and the answer is one matrix-vector product in numpy:

    score(u, i) = <e_u, e_i>           (manifest similarity "dot"; MF's vectors carry its biases)
                = <e_u/|e_u|, e_i/|e_i|>   ("cosine")

the movies the user rated (in any part of the split) masked out, the K best kept, ties broken by the exported
``tie_rank`` column (the run's seeded item order; lower item index in an export without it), as the evaluator's
top-K breaks them. This module imports numpy, pandas and pyarrow only.

The CLI uses it only when the export belongs to the run's current checkpoint (its size and mtime are recorded in
the manifest) and holds the user; otherwise (made-up users, mlp, popularity, ``export_embeddings=false``, an
unknown user, whose error message the model path words) it loads the model (:func:`recarena.inference.load_run`).
``tests/test_serving.py`` checks that both paths return the same movies and scores.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EXPORT_DIR, MANIFEST = "export", "manifest.json"
EXPORT_FORMAT_VERSION = 2
EMBEDDING = "embedding"  # the fixed-size list column of the exported parquet files
#: items.parquet's vectors whose cosine is the family's movie similarity (``similar``): MF's factors without
#: the bias columns of ``embedding``; absent for a family that cannot compare movies.
SIMILARITY = "similarity"
#: An export that cannot answer: a file missing or damaged (pyarrow's errors are OSError / ValueError), a user it
#: does not hold (LookupError), the corpus's ratings.npz truncated (zipfile.BadZipFile, EOFError).
_UNUSABLE = (OSError, ValueError, LookupError, EOFError, zipfile.BadZipFile)


def read_embeddings(path: str | Path, column: str = EMBEDDING) -> tuple[pd.DataFrame, np.ndarray]:
    """An exported parquet file as (its id columns, the ``(N, D)`` float32 matrix of ``column``), e.g.
    ``faiss.IndexFlatIP(d).add(matrix)``; the matrix is the column's value buffer, reshaped (read-only)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    vectors = table.column(column).combine_chunks()
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), vectors.type.list_size)
    drop = [name for name in (EMBEDDING, SIMILARITY) if name in table.column_names]
    return table.drop_columns(drop).to_pandas(), matrix


def checkpoint_stamp(path: Path) -> dict[str, int]:
    """What identifies a checkpoint file's content cheaply: its size and modification time."""
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def fresh_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The export's manifest if it was written from the run's current checkpoint by this format, else None."""
    from recarena.rundir import checkpoint_path  # torch-free

    try:
        manifest = json.loads((run_dir / EXPORT_DIR / MANIFEST).read_text())
        stamp = checkpoint_stamp(checkpoint_path(run_dir))
    except (OSError, ValueError):  # no export, unreadable, or no checkpoint (RunError is a ValueError)
        return None
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION or manifest.get("checkpoint") != stamp:
        return None
    return manifest


def recommend_from_export(run_dir: str | Path, user_id: int, k: int) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """Top ``k`` unrated movies of MovieLens user ``user_id`` (movie_id, title, year, genres, score, rank, as
    :meth:`recarena.inference.Run.recommend`) and the manifest; None when the export cannot answer."""
    from recarena.rundir import is_count

    run_dir = Path(run_dir)
    manifest = fresh_manifest(run_dir)
    if manifest is None or not is_count(k):  # a bad k: the model path words the error
        return None
    try:
        return _recommend(run_dir, manifest, int(user_id), int(k)), manifest
    except _UNUSABLE:  # a missing or damaged export file or corpus: the model path answers, or names the file
        return None


def _recommend(run_dir: Path, manifest: dict[str, Any], user_id: int, k: int) -> pd.DataFrame:
    users, user_vectors = read_embeddings(run_dir / EXPORT_DIR / "users.parquet")
    row = np.flatnonzero(users["user_id"].to_numpy() == user_id)
    if not len(row):
        raise LookupError(f"user {user_id} is not in the export")
    items, item_vectors = read_embeddings(run_dir / EXPORT_DIR / "items.parquet")
    query = user_vectors[row[0]]
    if manifest["similarity"] == "cosine":
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        item_vectors = item_vectors / np.maximum(np.linalg.norm(item_vectors, axis=1, keepdims=True), 1e-12)
    scores = item_vectors @ query  # (n_items,)
    scores[_rated_items(run_dir, user_id)] = -np.inf
    return _best(items, scores, k)


def similar_from_export(run_dir: str | Path, title: str | None, movie_id: int | None, k: int,
                        min_ratings: int = 0) -> tuple[pd.DataFrame, dict[str, Any]] | None:  # fmt: skip
    """``Run.similar`` from the export: the cosine of the exported similarity vectors, the movie itself and movies
    with fewer than ``min_ratings`` training ratings left out; None when the export cannot answer. An unknown or
    ambiguous title raises the model path's :class:`~recarena.errors.RunError`."""
    from recarena.rundir import is_count
    from recarena.titles import resolve_movie

    run_dir = Path(run_dir)
    manifest = fresh_manifest(run_dir)
    if manifest is None or not is_count(k) or not is_count(min_ratings, minimum=0):
        return None
    try:
        items, vectors = read_embeddings(run_dir / EXPORT_DIR / "items.parquet", SIMILARITY)
    except _UNUSABLE:  # an export without similarity vectors (KeyError), missing or damaged
        return None
    query = resolve_movie(items, title, movie_id, where=str(run_dir))
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    scores = unit @ unit[query]
    scores[(items["n_ratings"].to_numpy() < min_ratings) | (np.arange(len(scores)) == query)] = -np.inf
    return _best(items, scores, k), manifest


def _best(items: pd.DataFrame, scores: np.ndarray, k: int) -> pd.DataFrame:
    """The ``k`` best finite ``scores`` (n_items,): highest first, equal scores by the items' ``tie_rank``."""
    tie_rank = items["tie_rank"].to_numpy() if "tie_rank" in items else np.arange(len(scores))
    order = np.lexsort((tie_rank, -scores))[: min(int(k), int(np.isfinite(scores).sum()))]
    frame = items.iloc[order][["movie_id", "title", "year", "genres"]].reset_index(drop=True)
    return frame.assign(score=scores[order], rank=np.arange(1, len(order) + 1))


def _rated_items(run_dir: Path, user_id: int) -> np.ndarray:
    """Item indices the user rated in the run's corpus (train, validation and test alike)."""
    from recarena.rundir import CORPUS_DIR

    with np.load(run_dir / CORPUS_DIR / "ratings.npz") as ratings:  # arrays are read on access, one at a time
        index = np.flatnonzero(ratings["user_ids"] == user_id)
        return ratings["items"][ratings["users"] == index[0]] if len(index) else np.empty(0, np.int64)
