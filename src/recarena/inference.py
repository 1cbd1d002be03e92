"""Use a trained run: ``run = load_run(RUN_DIR)``, then ``run.recommend(user=196)``, ``run.recommend(users=None)``
and ``run.similar("Silence of the Lambs, The (1991)")``, each a pandas DataFrame.

Loading needs only the run dir (:mod:`recarena.rundir`): the resolved config, the checkpoint, and the curated
corpus and split saved beside them. The model is rebuilt the way training built it: the same datamodule code
derives the schema and training statistics from the saved corpus and split (:meth:`MovieLensDataModule.use`),
``build_model`` instantiates the family, ``attach`` rebuilds its data-derived tables, and the checkpoint's weights
are loaded onto the CPU (a GPU-trained checkpoint included). Recommendations go through the evaluator's own
exclusion mask and top-K (:mod:`recarena.evaluation.ranking`), users scored in chunks of ``eval.user_chunk``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from recarena.checks import group_targets
from recarena.data.corpus import Corpus
from recarena.data.datamodule import MovieLensDataModule
from recarena.evaluation.heldout import EvalData, effective_chunk_size
from recarena.evaluation.ranking import exclusion_mask, topk_items
from recarena.models.base import RecommenderModule
from recarena.rundir import RunError, checkpoint_path, read_run_data, read_run_meta

#: Columns describing a movie in every frame the API returns.
ITEM_COLUMNS = ["movie_id", "title", "year", "genres"]
_ALL_USERS: Any = object()  # recommend(users=...) not given


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained run's model from its run dir alone (no data cache, no retraining).

    Raises:
        RunError: not a run dir, a run format this version cannot read, saved data or checkpoint missing.
    """
    from recarena.run import build_datamodule, build_model  # Lightning + Hydra: only once a run is loaded

    run_dir = Path(path).expanduser()
    meta = read_run_meta(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    corpus, split = read_run_data(run_dir, meta)
    loss = instantiate(cfg.loss)
    dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
    dm.use(corpus, split)
    if dm.schema.to_dict() != meta["schema"]:
        raise RunError(f"{run_dir}: the saved corpus does not give the schema the model was trained with: retrain")
    model = build_model(cfg, dm)
    model.attach(dm)  # the family's data-derived tables (non-persistent buffers), exactly as in training
    if model.trainable:  # popularity has no weights: attach() counted its training ratings
        checkpoint = torch.load(checkpoint_path(run_dir), map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    return Run(run_dir, cfg, meta, dm, model)


def resolve_movie(corpus: Corpus, title: str | None = None, movie_id: int | None = None, where: str = "") -> int:
    """Item index of a movie given as ``"Title (Year)"`` (case-insensitive; a title without the year when it is
    unique) or as a MovieLens movie id. No match: an error with up to three close titles; several: an error
    listing them with their ids."""
    where = f" in {where}" if where else ""
    if (title is None) == (movie_id is None):
        raise RunError("give a movie as a title or as a movie id (one of the two)")
    ids = corpus.item_ids
    if movie_id is not None:
        hits = np.flatnonzero(ids == int(movie_id))
        if not len(hits):
            raise RunError(f"movie id {movie_id} is not in the catalogue{where} (ids run from {ids.min()} to {ids.max()})")
        return int(hits[0])
    display = corpus.display_titles().fillna("")
    folded = display.str.casefold()
    wanted = " ".join(str(title).split()).casefold()
    hits = np.flatnonzero((folded == wanted).to_numpy())
    if not len(hits):  # "Toy Story" for "Toy Story (1995)" when only one movie has that title
        hits = np.flatnonzero((corpus.item_table["title"].str.casefold() == wanted).to_numpy())
    if len(hits) == 1:
        return int(hits[0])
    if len(hits) > 1:
        listing = "; ".join(f"{display.iloc[i]} (id {ids[i]})" for i in hits[:10])
        raise RunError(f"{title!r} matches {len(hits)} movies{where}: {listing}; pick one by its id (--movie-id ID, or movie_id=ID)")
    unique = dict(zip(folded, display, strict=True))
    close = [unique[m] for m in difflib.get_close_matches(wanted, list(unique), n=3, cutoff=0.6)]
    quoted = ", ".join(f'"{t}"' for t in close)  # quoted: titles such as "Lambs, The (1991)" hold commas
    hint = f"did you mean: {quoted}?" if close else 'titles are written "Title (Year)", e.g. "Toy Story (1995)"'
    raise RunError(f"no movie titled {title!r}{where}; {hint}")


def check_k(k: Any) -> int:
    """``k`` as an int; anything but a positive integer is a :class:`RunError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise RunError(f"k must be a positive integer (how many movies to list), got {k!r}")
    return int(k)


class Run:
    """A loaded run: its config, corpus, split and model (in eval mode). Build it with :func:`load_run`."""

    def __init__(
        self, path: Path, config: DictConfig, meta: dict[str, Any], datamodule: MovieLensDataModule,
        model: RecommenderModule,
    ) -> None:  # fmt: skip
        self.path = path
        self.config = config
        self.meta = meta
        self.datamodule = datamodule
        self.model = model
        self.family: str = meta.get("model", "?")
        self.corpus: Corpus = datamodule.corpus
        self.split = datamodule.split

    # ------------------------------------------------------------------ lookups
    @cached_property
    def _seen(self) -> EvalData:
        """Every rating of each user in the saved corpus (train, val, test, known): never recommended again.
        An :class:`EvalData` without held-out ratings, so chunks are cut by the evaluator's own code."""
        c, none = self.corpus, np.empty(0, dtype=np.int64)
        return EvalData(c.n_users, c.n_items, c.users, c.items, none, none, np.empty(0, dtype=np.float32))

    @cached_property
    def _scorable(self) -> np.ndarray:
        """(n_users,) bool: users with training ratings (and, for families that build users from their ratings,
        held-out users of ``split=users`` through their known ratings)."""
        scorable = np.zeros(self.corpus.n_users, dtype=bool)
        scorable[self.corpus.users[self.split.train]] = True
        if not self.model.needs_user_ids:
            scorable[self.corpus.users[self.split.known]] = True
        return scorable

    @cached_property
    def _user_index(self) -> pd.Index:
        return pd.Index(self.corpus.user_ids)

    def user_indices(self, user_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Corpus indices of MovieLens user ids; an unknown one is an error naming the id range."""
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        index = self._user_index.get_indexer(ids)
        ok = index >= 0
        ok[ok] = self._scorable[index[ok]]
        if not ok.all():
            known = self.corpus.user_ids[self._scorable]
            raise RunError(
                f"user {ids[~ok][0]} is not in the training data of {self.path} "
                f"(ids run from {known.min()} to {known.max()})"
            )
        return index

    def items(self, indices: np.ndarray) -> pd.DataFrame:
        """movie_id, title, year, genres of item indices, in their order."""
        return self.corpus.item_table.iloc[np.asarray(indices)][ITEM_COLUMNS].reset_index(drop=True)

    # ------------------------------------------------------------------ recommendations
    @torch.no_grad()
    def top_k(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` unseen items of user indices and their scores, ``(U, k)`` each; positions past a user's
        unseen items hold item -1. Users are scored ``eval.user_chunk`` at a time (capped by catalogue size)."""
        n_items = self.corpus.n_items
        chunk = effective_chunk_size(int(self.config.eval.user_chunk), n_items)
        device = self.model.device
        items, scores = np.empty((len(users), k), np.int64), np.empty((len(users), k), np.float32)
        for start in range(0, len(users), chunk):
            batch = {key: v.to(device) for key, v in self._seen.batch_for(users[start : start + chunk]).items()}
            values = self.model.score_all(batch["users"])  # (B, n_items)
            top = topk_items(values, exclusion_mask(batch, n_items), k)  # (B, k), -1 past the unseen items
            items[start : start + chunk] = top.cpu().numpy()
            scores[start : start + chunk] = values.gather(1, top.clamp(min=0)).float().cpu().numpy()
        return items, scores

    def recommend(self, user: int | None = None, k: int = 10, *, users: Any = _ALL_USERS) -> pd.DataFrame:
        """Top-``k`` movies the user has not rated (in the training, validation or test part), best first.

        ``recommend(user=196)``: one MovieLens user id -> movie_id, title, year, genres, score, rank.
        ``recommend(users=[...])`` or ``users=None`` (every user with training ratings) -> one row per (user,
        rank): user_id, rank, movie_id, score. ``score`` is the family's ranking score (higher first; e.g. MF's
        pre-sigmoid output, a cosine for siamese), the one its metrics were computed on.
        """
        k = check_k(k)
        if (user is None) == (users is _ALL_USERS):
            raise RunError("give either user=ID (one user) or users=[IDS] / users=None (every user)")
        if user is not None:
            items, scores = self.top_k(self.user_indices([user]), k)
            keep = items[0] >= 0
            frame = self.items(items[0, keep])
            return frame.assign(score=scores[0, keep], rank=np.arange(1, int(keep.sum()) + 1))
        index = np.unique(self.corpus.users[self.split.train]) if users is None else self.user_indices(users)
        items, scores = self.top_k(index, k)
        rows, ranks = np.nonzero(items >= 0)
        return pd.DataFrame({
            "user_id": self.corpus.user_ids[index][rows],
            "rank": ranks + 1,
            "movie_id": self.corpus.item_ids[items[rows, ranks]],
            "score": scores[rows, ranks],
        })  # fmt: skip

    # ------------------------------------------------------------------ similar movies
    def similar(
        self, title: str | None = None, k: int = 10, min_ratings: int = 0, *, movie_id: int | None = None
    ) -> pd.DataFrame:
        """The ``k`` movies nearest to one (by title or ``movie_id``) by cosine of the family's item vectors
        (:meth:`RecommenderModule.item_similarity_vectors`), the movie itself left out; ``min_ratings`` keeps
        only movies with at least that many training ratings. Columns: movie_id, title, year, genres, score
        (the cosine), rank."""
        k = check_k(k)
        with torch.no_grad():
            vectors = self.model.item_similarity_vectors()
        if vectors is None:
            able = [name for name, target in group_targets("model").items() if get_class(target).compares_items()]
            raise RunError(
                f"model={self.family} has no item embeddings to compare movies with; similar() works with runs of "
                f"{', '.join(able)}"
            )
        query = resolve_movie(self.corpus, title, movie_id, where=str(self.path))
        unit = F.normalize(vectors.detach().float().cpu(), dim=-1)  # (n_items, D)
        cosine = unit @ unit[query]  # (n_items,)
        exclude = torch.from_numpy(self.datamodule.item_popularity < min_ratings)
        exclude[query] = True
        top = topk_items(cosine[None], exclude[None], k)[0].numpy()
        top = top[top >= 0]
        return self.items(top).assign(score=cosine[top].numpy(), rank=np.arange(1, len(top) + 1))
