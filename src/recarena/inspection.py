"""Look into a trained run without retraining it: re-evaluate, explain, export (``recarena evaluate|explain|export``).

Each function takes a :class:`recarena.inference.Run` (``load_run(RUN_DIR)``):

- :func:`evaluate` scores the run's own validation or test part again with other cut-offs or another relevance
  threshold, through the evaluator training used (:class:`RankingMetrics`, :class:`RatingMetrics` and the
  family's own evaluation step), so with the run's settings it gives the numbers of ``metrics.json``.
- :func:`bias_table` and :func:`item_pca` (:func:`explain` writes both): the movies liked most and least whoever
  rates them (item biases, where the family has them), and a PCA of the item vectors as a PNG with the most-rated
  titles labelled (fastai's reading of a collaborative-filtering model: Howard & Gugger, *Deep Learning for
  Coders*, ch. 8; the blog post "A simple movie recommender based on similarity").
- :func:`export` writes user and item embeddings with their MovieLens ids to parquet for an approximate
  nearest-neighbour index, plus a manifest that says how to score them.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from recarena.atomic import atomic_file
from recarena.errors import RunError
from recarena.evaluation.metrics import RankingMetrics, RatingMetrics
from recarena.inference import Run, families_that
from recarena.rundir import checkpoint_path, is_count
from recarena.serving import EMBEDDING, EXPORT_FORMAT_VERSION, SIMILARITY, checkpoint_stamp, read_embeddings

if TYPE_CHECKING:
    from recarena.run import FinishedRun

log = logging.getLogger(__name__)
__all__ = ["bias_table", "evaluate", "explain", "export", "item_pca", "read_embeddings"]

#: ``evaluate(relevance_threshold=...)`` not given: the run's own ``eval.relevance_threshold``.
RUN_SETTING: Any = object()
PARTS = ("val", "test")


# ----------------------------------------------------------------------------------------------- evaluate
def check_cutoffs(ks: Sequence[Any]) -> list[int]:
    """Distinct positive cut-offs, ascending; an empty list, a non-integer or ``k <= 0`` is a :class:`RunError`."""
    ks = list(ks)
    if not ks:
        raise RunError("give at least one cut-off K (e.g. --ks 5 10 50)")
    bad = [k for k in ks if not is_count(k)]
    if bad:
        raise RunError(f"cut-offs K must be positive integers, got {bad[0]!r}")
    return sorted({int(k) for k in ks})


def evaluate(
    run: Run, ks: Sequence[int] | None = None, relevance_threshold: float | None = RUN_SETTING, part: str = "test"
) -> dict[str, float]:
    """Metrics of the run's model on its own split, ``{"recall@10": ..., "ndcg@10": ..., "users_ranked": ...}``
    (and ``rmse``/``mae`` for families that predict ratings), as ``metrics.json`` holds them without the part prefix.

    Args:
        ks: cut-offs; None = the run's ``eval.ks``.
        relevance_threshold: held-out ratings ``>=`` this are relevant, None = every held-out item; not given =
            the run's ``eval.relevance_threshold``.
        part: ``"test"`` (training and validation items excluded from ranking) or ``"val"`` (training items
            excluded): the datamodule's own evaluation data, as training scored it (``eval.max_users`` sample too).
    """
    settings = run.config.eval
    ks = check_cutoffs(settings.ks if ks is None else ks)
    if relevance_threshold is RUN_SETTING:
        relevance_threshold = settings.relevance_threshold
    if relevance_threshold is not None:
        if isinstance(relevance_threshold, bool) or not isinstance(relevance_threshold, numbers.Real) \
                or not math.isfinite(relevance_threshold):  # fmt: skip
            raise RunError(f"the relevance threshold must be a number or None, got {relevance_threshold!r}")
        relevance_threshold = float(relevance_threshold)
    if part not in PARTS:
        raise RunError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    data = run.datamodule.val_data if part == "val" else run.datamodule.test_data
    model = run.model
    ranking = RankingMetrics(
        ks=ks,
        n_items=model.schema.n_items,
        item_popularity=run.datamodule.item_popularity,
        head_share=float(settings.head_share),
        relevance_threshold=relevance_threshold,
        tie_seed=settings.get("tie_seed"),
    ).to(model.device)
    rating = RatingMetrics().to(model.device)
    with torch.no_grad():
        for batch in data.batches(int(settings.user_chunk)):
            # The step validation and test run in training: score_all -> ranking, predict_ratings -> rating.
            model._eval_step({key: value.to(model.device) for key, value in batch.items()}, ranking, rating)
    model._release_score_block()
    values = ranking.compute()
    if model.predicts_ratings and rating.update_count:
        values.update(rating.compute())
    return {name: float(value) for name, value in values.items()}


# ----------------------------------------------------------------------------------------------- explain
def has_item_biases(cls: type) -> bool:
    """Whether a family offers item biases (an ``item_biases()`` method), for `explain` and its messages."""
    return "item_biases" in cls.provides


def item_biases(model: Any) -> torch.Tensor | None:
    """``(n_items,)`` item biases of a family that offers them by an ``item_biases()`` method (mf, twotower), else None."""
    biases = model.item_biases() if has_item_biases(type(model)) else None  # a family may have none configured
    return None if biases is None else biases.detach().float().cpu()


def _item_stats(run: Run) -> pd.DataFrame:
    """movie_id, title, year, genres of every item, with ``n_ratings`` and ``mean_rating`` over the training part."""
    c, train = run.corpus, run.split.train
    counts = run.datamodule.item_popularity.astype(np.int64)
    sums = np.bincount(c.items[train], weights=c.ratings[train], minlength=c.n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts  # NaN for a movie without training ratings
    return run.items(np.arange(c.n_items)).assign(n_ratings=counts, mean_rating=mean)


def _frequent(run: Run, min_ratings: int, what: str, at_least: int = 1) -> np.ndarray:
    """Item indices with ``>= min_ratings`` training ratings; fewer than ``at_least`` is a :class:`RunError`."""
    if not is_count(min_ratings, minimum=0):
        raise RunError(f"min_ratings must be a non-negative integer, got {min_ratings!r}")
    kept = np.flatnonzero(run.datamodule.item_popularity >= min_ratings)
    if len(kept) < at_least:
        raise RunError(
            f"{len(kept)} movies of {run.path} have at least {min_ratings} training ratings, {what} needs "
            f"{at_least}: lower min_ratings (--min-ratings)"
        )
    return kept


def bias_table(run: Run, top: int = 10, min_ratings: int = 20) -> pd.DataFrame | None:
    """The ``top`` movies with the highest and the lowest item bias among those with at least ``min_ratings``
    training ratings (a bias fitted on a handful of ratings says little), or None when the family has no biases.

    Columns: side (``top``: highest first; ``bottom``: lowest first), rank, movie_id, title, year, genres, bias,
    n_ratings, mean_rating (training). A bias is what the model adds for the movie whoever the user is: a movie
    with a high bias but a modest mean rating is liked more than its raters' tastes would predict.
    """
    if not is_count(top):
        raise RunError(f"top must be a positive integer (movies per side), got {top!r}")
    biases = item_biases(run.model)
    if biases is None:
        return None
    kept = _frequent(run, min_ratings, "the bias table")
    order = kept[np.argsort(-biases.numpy()[kept], kind="stable")]  # highest bias first
    stats = _item_stats(run).assign(bias=biases.numpy())
    sides = []
    for side, index in (("top", order[:top]), ("bottom", order[::-1][:top])):
        frame = stats.iloc[index].reset_index(drop=True)
        sides.append(frame.assign(side=side, rank=np.arange(1, len(index) + 1)))
    columns = ["side", "rank", "movie_id", "title", "year", "genres", "bias", "n_ratings", "mean_rating"]
    return pd.concat(sides, ignore_index=True)[columns]


def item_pca(run: Run, min_ratings: int = 20) -> tuple[pd.DataFrame, np.ndarray]:
    """The first two principal components of the family's item vectors (``item_similarity_vectors``: MF's and
    MLP's item factors, the two-tower's item tower without its bias, siamese's embeddings) over the movies with at
    least ``min_ratings`` training ratings.

    Returns a frame (movie_id, title, year, genres, n_ratings, mean_rating, pc1, pc2) and the share of variance
    of each component. PCA by SVD of the centred ``(N, D)`` matrix (``O(N D^2)``); each component's sign is
    fixed so that its largest loading is positive, so the picture does not flip between runs of the code.
    """
    with torch.no_grad():
        vectors = run.model.item_similarity_vectors()
    if vectors is None:
        able = families_that(lambda cls: "item_vectors" in cls.provides)
        raise RunError(f"model={run.family} has no item vectors to explain; explain works with runs of {able}")
    kept = _frequent(run, min_ratings, "a PCA", at_least=3)
    x = vectors.detach().double().cpu().numpy()[kept]
    x -= x.mean(0)
    _, singular, components = np.linalg.svd(x, full_matrices=False)  # components: (min(N, D), D)
    top = components[:2]
    top *= np.sign(top[np.arange(len(top)), np.abs(top).argmax(1)])[:, None]
    coords = x @ top.T  # (N, 2)
    variance = singular**2
    share = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    frame = _item_stats(run).iloc[kept].reset_index(drop=True)
    return frame.assign(pc1=coords[:, 0], pc2=coords[:, 1] if coords.shape[1] > 1 else 0.0), share


def plot_item_pca(frame: pd.DataFrame, share: np.ndarray, path: str | Path, labels: int = 30, title: str = "") -> Path:
    """Scatter of :func:`item_pca`'s coordinates with the ``labels`` most-rated titles written beside their
    points, saved as a PNG atomically. matplotlib's object API on the Agg canvas: no pyplot state, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 9), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    size = 4 + 4 * np.log1p(frame["n_ratings"].to_numpy())  # area grows with the number of ratings
    points = ax.scatter(frame["pc1"], frame["pc2"], s=size, c=frame["mean_rating"], cmap="viridis", alpha=0.6,
                        linewidths=0)  # fmt: skip
    fig.colorbar(points, ax=ax, label="mean training rating")
    named = frame.nlargest(labels, "n_ratings", keep="first") if labels > 0 else frame.iloc[:0]
    years = named["year"].astype("string").fillna("")
    middle = float(frame["pc1"].median()) if len(frame) else 0.0
    for (x, y), name, year in zip(named[["pc1", "pc2"]].to_numpy(), named["title"], years, strict=True):
        right = x > middle  # text towards the middle, so labels of points near an edge stay inside the axes
        ax.annotate(f"{name} ({year})" if year else name, (x, y), xytext=(-3 if right else 3, 3), fontsize=7,
                    textcoords="offset points", ha="right" if right else "left")  # fmt: skip
    ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({share[1]:.0%} of variance)" if len(share) > 1 else "PC2")
    ax.set_title(f"{title or 'item vectors'} · labelled: the {len(named)} most rated", loc="left")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
    return path


def explain(
    run: Run, out: str | Path | None = None, top: int = 10, min_ratings: int = 20, labels: int = 30
) -> dict[str, Any]:
    """:func:`bias_table` and :func:`item_pca` of a run; the PCA plot goes to ``out/item_pca.png`` (default
    ``RUN_DIR/explain``). Returns ``{"biases": frame or None, "pca": path, "pca_variance": [pc1, pc2],
    "pca_movies": n}``. A family without item vectors (popularity) is a :class:`RunError`."""
    biases = bias_table(run, top=top, min_ratings=min_ratings)
    frame, share = item_pca(run, min_ratings=min_ratings)
    title = f"model={run.family} · item vectors of {len(frame)} movies with >= {min_ratings} training ratings"
    path = plot_item_pca(frame, share, Path(out or run.path / "explain") / "item_pca.png", labels, title)
    return {"biases": biases, "pca": path, "pca_variance": share.tolist(), "pca_movies": len(frame)}


# ----------------------------------------------------------------------------------------------- export
def exports_embeddings(cls: type) -> bool:
    """Whether a family has user and item embeddings to export (``recarena export``, the serving path)."""
    return "export" in cls.provides


def vector_similarity(loss: Any) -> str:
    """``"dot"`` or ``"cosine"``: how the run's loss compares user and item vectors (its declared
    ``Loss.similarity``, which ``Loss.compare`` and so ``score_all`` rank by)."""
    if loss.similarity not in ("dot", "cosine"):
        raise RunError(f"loss {type(loss).__name__} compares vectors by {loss.similarity!r}: cannot export")
    return str(loss.similarity)


def _vector_table(ids: pd.DataFrame, vectors: np.ndarray, similarity: np.ndarray | None = None) -> Any:
    """A pyarrow table of ``ids``' columns plus ``embedding`` (and ``similarity``), ``fixed_size_list<float32>``
    columns."""
    import pyarrow as pa

    table = pa.Table.from_pandas(ids, preserve_index=False)
    for name, matrix in ((EMBEDDING, vectors), (SIMILARITY, similarity)):
        if matrix is not None:
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            table = table.append_column(name, pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)),
                                                                                 matrix.shape[1]))  # fmt: skip
    return table


def _doc(method: Any) -> str:
    return (method.__doc__ or "").strip().split("\n")[0]


def export_after_run(finished: FinishedRun) -> None:
    """``after_run.export`` of conf/train.yaml: with ``export_embeddings: true`` (the default), the finished run's
    :func:`export_for_serving`, for the families that have vectors to export (the run is loaded only for them)."""
    if finished.cfg.get("export_embeddings", True) and exports_embeddings(type(finished.model)) and finished.load:
        export_for_serving(finished.load())


def export_for_serving(run: Run) -> dict[str, Any] | None:
    """At the end of training: ``RUN_DIR/export``, the vectors ``recarena recommend`` answers from without loading
    the model (:mod:`recarena.serving`), for families that have them (else None). ``run`` is the run as
    :func:`load_run` reads it from its dir, so this is exactly what a later ``recarena export`` would write; a
    failure is logged and never fails the finished run."""
    if not exports_embeddings(type(run.model)):
        return None
    try:
        return export(run)
    except Exception:
        log.exception("could not export the embeddings of %s (recarena export RUN_DIR retries)", run.path)
        return None


def export(run: Run, out: str | Path | None = None, chunk: int = 65536) -> dict[str, Any]:
    """Write ``users.parquet``, ``items.parquet`` and ``manifest.json`` into ``out`` (default ``RUN_DIR/export``).

    - users.parquet: ``user_id`` (as in the MovieLens files), ``n_ratings`` (training), ``embedding``; one row per
      user the model can score (users with training ratings; for families that build users from their ratings,
      held-out users of ``split=users`` too). Streamed ``chunk`` users at a time, one parquet row group each.
    - items.parquet: ``movie_id``, ``title``, ``year``, ``genres``, ``n_ratings`` (training), ``tie_rank`` (the
      evaluator's order among equal scores, ``eval.tie_seed``), ``embedding``; every movie of the catalogue
      (filter on ``n_ratings`` for movies the model learnt something about).
    - manifest.json: family, dim, ``similarity`` (``dot``: inner product; ``cosine``: normalise both sides first),
      row counts, what the vectors are, the run's split fingerprint.

    ``embedding`` is a fixed-size list of float32 (``fixed_size_list<float32>[D]``): its values are one contiguous
    buffer, so :func:`read_embeddings` gives the ``(N, D)`` float32 matrix faiss, hnswlib and annoy take without
    a copy per column. The vectors are the family's ``user_embeddings`` / ``item_embeddings`` as ``score_all``
    compares them: MF's carry its biases (``[p_u, b_u, 1] . [q_i, 1, b_i] = p_u . q_i + b_u + b_i``), so a
    maximum-inner-product search returns the model's own ranking (the movies a user has rated are not excluded).
    Every file is written atomically, the manifest last.
    """
    model = run.model
    if not exports_embeddings(type(model)):
        raise RunError(
            f"model={run.family} has no user and item embeddings to export; export works with runs of "
            f"{families_that(exports_embeddings)}"
        )
    if not is_count(chunk):
        raise RunError(f"chunk must be a positive integer (users per row group), got {chunk!r}")
    out = Path(out or run.path / "export")
    similarity = vector_similarity(model.loss_fn)
    rows = run.split.train if model.needs_user_ids else np.concatenate([run.split.train, run.split.known])
    users = np.unique(run.corpus.users[rows])
    n_items, dim = _write_item_vectors(run, out / "items.parquet")
    _write_user_vectors(run, users, dim, out / "users.parquet", chunk)
    manifest = _export_manifest(run, similarity, dim, n_users=len(users), n_items=n_items)
    with atomic_file(out / "manifest.json") as handle:
        handle.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_item_vectors(run: Run, path: Path) -> tuple[int, int]:
    """items.parquet: every movie's table row, training count and vector; returns (rows, dim)."""
    import pyarrow.parquet as pq

    with torch.no_grad():
        items = run.model.item_embeddings().detach().float().cpu().numpy()  # (n_items, D)
        similar = run.model.item_similarity_vectors() if run.model.compares_items() else None
    similar = None if similar is None else similar.detach().float().cpu().numpy()  # what `similar` compares
    item_stats = _item_stats(run)[["movie_id", "title", "year", "genres", "n_ratings"]]
    tie_rank = run.tie_rank
    item_stats = item_stats.assign(tie_rank=np.arange(len(item_stats)) if tie_rank is None else tie_rank.numpy())
    with atomic_file(path, "wb") as handle:
        pq.write_table(_vector_table(item_stats, items, similar), handle)
    return items.shape[0], items.shape[1]


def _write_user_vectors(run: Run, users: np.ndarray, dim: int, path: Path, chunk: int) -> None:
    """users.parquet: id, training count and vector of each user, ``chunk`` users per row group."""
    import pyarrow.parquet as pq

    model, c = run.model, run.corpus
    user_counts = np.bincount(c.users[run.split.train], minlength=c.n_users)
    with atomic_file(path, "wb") as handle:
        writer = None
        for start in range(0, max(len(users), 1), chunk):
            part = users[start : start + chunk]
            with torch.no_grad():
                vectors = model.user_embeddings(torch.from_numpy(part).to(model.device)).float().cpu().numpy()
            ids = pd.DataFrame({"user_id": c.user_ids[part].astype(np.int64), "n_ratings": user_counts[part]})
            table = _vector_table(ids, vectors.reshape(len(part), dim))
            writer = writer or pq.ParquetWriter(handle, table.schema)
            writer.write_table(table)
        writer.close()


def _export_manifest(run: Run, similarity: str, dim: int, n_users: int, n_items: int) -> dict[str, Any]:
    """manifest.json: what the vectors are, how to compare and index them, and the checkpoint they come from."""
    model = run.model
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "run_dir": str(run.path),
        "family": run.family,
        "loss": run.meta.get("loss"),
        "dim": int(dim),
        "dtype": "float32",
        "similarity": similarity,
        "score": "users.embedding[u] . items.embedding[i]" if similarity == "dot" else
                 "cosine(users.embedding[u], items.embedding[i]): L2-normalise both, then the inner product",
        "index": "faiss IndexFlatIP (or IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT)), hnswlib space 'ip', annoy 'dot'"
                 if similarity == "dot" else "faiss IndexFlatIP after faiss.normalize_L2 on both sides, hnswlib "
                 "space 'cosine', annoy 'angular'",
        "users": {"file": "users.parquet", "rows": int(n_users), "id": "user_id", "vectors": _doc(model.user_embeddings)},
        "items": {"file": "items.parquet", "rows": int(n_items), "id": "movie_id", "vectors": _doc(model.item_embeddings)},
        "embedding_column": EMBEDDING,
        "split_fingerprint": run.split.fingerprint,
        # The checkpoint the vectors come from: `recarena recommend` answers from this export only while it holds.
        "checkpoint": checkpoint_stamp(checkpoint_path(run.path)),
    }  # fmt: skip
