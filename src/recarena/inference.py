"""Use a trained run: ``run = load_run(RUN_DIR)``, then ``run.recommend(user=196)``, ``run.recommend(users=None)``,
a made-up user ``run.recommend(liked=["Toy Story (1995)"], likes_genre=["Animation"])``,
``run.similar("Silence of the Lambs, The (1991)")`` and ``run.search(["war", "drama"])``, each a pandas DataFrame.

Loading needs only the run dir (:mod:`recarena.rundir`): the resolved config, the checkpoint, and the curated
corpus and split saved beside them. The model is rebuilt the way training built it: the same datamodule code
derives the schema and training statistics from the saved corpus and split (:meth:`MovieLensDataModule.use`),
``build_model`` instantiates the family, ``attach`` rebuilds its data-derived tables, and the checkpoint's weights
are loaded onto the CPU (a GPU-trained checkpoint included). Recommendations go through the evaluator's own
exclusion mask and top-K (:mod:`recarena.evaluation.ranking`), users scored in chunks of ``eval.user_chunk``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
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
from recarena.data.heldout import EvalData, effective_chunk_size
from recarena.errors import RunError, one_line
from recarena.evaluation.ranking import exclusion_pairs, seeded_tie_rank, topk_items
from recarena.models.base import RecommenderModule
from recarena.rundir import DAMAGED, check_k, checkpoint_path, read_run_data, read_run_meta, user_codes
from recarena.titles import resolve_movie

#: Columns describing a movie in every frame the API returns.
ITEM_COLUMNS = ["movie_id", "title", "year", "genres"]
_ALL_USERS: Any = object()  # recommend(users=...) not given


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild a trained run's model from its run dir alone (no data cache, no retraining).

    Raises:
        RunError: not a run dir, a run format this version cannot read, saved data or checkpoint missing.
    """
    from recarena.build import build_datamodule, build_model  # Lightning + Hydra: only once a run is loaded

    run_dir = Path(path).expanduser()
    meta = read_run_meta(run_dir)
    cfg = _run_config(run_dir)
    corpus, split = read_run_data(run_dir, meta)
    loss = instantiate(cfg.loss)
    dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
    dm.use(corpus, split)
    if dm.schema.to_dict() != meta["schema"]:
        raise RunError(f"{run_dir}: the saved corpus does not give the schema the model was trained with: retrain")
    model = build_model(cfg, dm)
    model.attach(dm)  # the family's data-derived tables (non-persistent buffers), exactly as in training
    if model.trainable:  # popularity has no weights: attach() counted its training ratings
        _load_weights(model, checkpoint_path(run_dir))
    model.to(device).eval()
    return Run(run_dir, cfg, meta, dm, model)


def _run_config(run_dir: Path) -> DictConfig:
    """The run's ``config.yaml``; an unreadable one is a :class:`RunError` naming it."""
    path = run_dir / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
        cfg.loss._target_, cfg.model._target_  # noqa: B018  (a run's config names both)
    except Exception as err:  # YAML syntax, a mapping without model or loss
        raise RunError(f"{path} is unreadable ({one_line(err)}): restore the run's config.yaml or retrain") from None
    return cfg


def _load_weights(model: RecommenderModule, path: Path) -> None:
    """The checkpoint's weights into the model ``config.yaml`` describes; a truncated or foreign checkpoint, or a
    config edited to other sizes, is a :class:`RunError` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    except (*DAMAGED, TypeError) as err:
        raise RunError(f"{path} is damaged or not a Lightning checkpoint ({one_line(err)}): use the other checkpoint "
                       "of checkpoints/ (best.ckpt or last.ckpt) or retrain") from None  # fmt: skip
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # size mismatch or missing keys
        raise RunError(f"{path} does not fit the model of {path.parent.parent / 'config.yaml'} "
                       f"({one_line(err)}): restore the run's config.yaml or retrain") from None  # fmt: skip


def _as_list(values: Any) -> list[Any]:
    """A list of the values of a list-like argument; a lone string is one value (``liked="Toy Story (1995)"``)."""
    if values is None:
        return []
    return [values] if isinstance(values, (str, int, np.integer)) else list(values)


def scores_made_up_users(family: type[RecommenderModule]) -> bool:
    """Whether a family builds a user from ratings alone (``needs_user_ids`` False): it can score a made-up one."""
    return "made_up_users" in family.provides


def searches_keywords(family: type[RecommenderModule]) -> bool:
    """Whether a family encodes descriptor bags as items (``run.search``)."""
    return "keyword_search" in family.provides


def families_that(can: Callable[[type[RecommenderModule]], bool]) -> str:
    """Names of the ``model=`` choices whose class passes ``can``, for an error message."""
    return ", ".join(name for name, target in group_targets("model").items() if can(get_class(target)))


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
    def tie_rank(self) -> torch.Tensor | None:
        """The evaluator's order among equal scores (``eval.tie_seed``), so recommendations rank as the metrics did;
        None (lower item index first) for a run whose config has no tie seed."""
        seed = self.config.eval.get("tie_seed")
        return None if seed is None else seeded_tie_rank(self.corpus.n_items, int(seed))

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

    def user_indices(self, user_ids: Sequence[int | str] | np.ndarray) -> np.ndarray:
        """Corpus indices of user ids (MovieLens ids; for a file with text ids, the text, e.g. ``"alice"``); an
        unknown one is an error naming the id range."""
        ids = user_codes(self.corpus.user_table, user_ids, str(self.path))
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
            top = topk_items(values, exclusion_pairs(batch), k, self.tie_rank)  # (B, k), -1 past the unseen
            items[start : start + chunk] = top.cpu().numpy()
            scores[start : start + chunk] = values.gather(1, top.clamp(min=0)).float().cpu().numpy()
        return items, scores

    def recommend(
        self, user: int | None = None, k: int = 10, *, users: Any = _ALL_USERS, liked: Sequence[str] = (),
        liked_ids: Sequence[int] = (), likes_genre: Sequence[str] = (), dislikes_genre: Sequence[str] = (),
    ) -> pd.DataFrame:  # fmt: skip
        """Top-``k`` movies the user has not rated (in the training, validation or test part), best first.

        ``recommend(user=196)``: one MovieLens user id -> movie_id, title, year, genres, score, rank.
        ``recommend(users=[...])`` or ``users=None`` (every user with training ratings) -> one row per (user,
        rank): user_id, rank, movie_id, score. ``score`` is the family's ranking score (higher first; e.g. MF's
        pre-sigmoid output, a cosine for siamese), the one its metrics were computed on.

        A made-up user (as in the blog post "Building a Two-Tower Deep Learning Movie Recommender System in PyTorch"
        (2024)), for families that build users from their ratings (``needs_user_ids`` False: twotower, siamese):
        ``recommend(liked=["Toy Story (1995)", ...], liked_ids=[1, ...], likes_genre=["Animation"],
        dislikes_genre=["Horror"])`` -> the same columns as ``user=``, the liked movies left out.
        Titles resolve as in :func:`resolve_movie`, genres case-insensitively. The user is formed as:

        * ratings: each liked movie (titles first, then ids, in the order given; duplicates once) rated at the top
          of the run's rating scale (``rating_high``), in that order as if oldest first;
        * twotower (:meth:`~recarena.models.twotower.TwoTower.rated_user_embeddings`): those ratings are the
          user's input ratings: mean m = (n r_high + α μ) / (n + α) (shrunk to the training mean μ, so with few
          movies a liked one stands above the mean), ratings context x_ctx = r_high - m on the liked movies among
          the N context movies, history = the last L liked movies; the per-genre part is the liked movies' genre
          means minus m, except that a liked genre's mean is ``rating_high`` and a disliked genre's
          ``rating_low`` (x_genre = rating_high - m, resp. rating_low - m); a genre neither stated nor rated is
          0, as for a training user who never rated it. The user vector then goes through the trained tower.
        * siamese (:meth:`~recarena.models.siamese.Siamese.rated_user_embeddings`): the weighted mean, by the
          run's ``user_weighting`` of those ratings, of the liked movies' embeddings and, for each liked genre,
          the embedding of that genre's descriptor alone (what ``search([genre])`` queries with), one more
          top-rated "item". All ratings being equal, every weighting gives them equal weights. The vector has
          no way to say "dislike" (the weightings keep likes only), so movies of a disliked genre are left out
          of the results instead.

        Other families (ids learnt per training user: mf, mlp, popularity) raise :class:`RunError` naming the
        families that can.
        """
        k = check_k(k)
        made_up = any(len(_as_list(v)) for v in (liked, liked_ids, likes_genre, dislikes_genre))
        if (user is not None) + (users is not _ALL_USERS) + made_up != 1:
            raise RunError(
                "give one of user=ID (one user), users=[IDS] / users=None (every user), or a made-up user "
                "(liked=[TITLES], liked_ids=[IDS], likes_genre=[GENRES], dislikes_genre=[GENRES])"
            )
        if made_up:
            return self._made_up(liked, liked_ids, likes_genre, dislikes_genre, k)
        if user is not None:
            return self._one_user(user, k)
        return self._many_users(np.unique(self.corpus.users[self.split.train]) if users is None
                                else self.user_indices(users), k)  # fmt: skip

    def _one_user(self, user: int, k: int) -> pd.DataFrame:
        """``recommend(user=ID)``: movie_id, title, year, genres, score, rank."""
        items, scores = self.top_k(self.user_indices([user]), k)
        keep = items[0] >= 0
        frame = self.items(items[0, keep])
        return frame.assign(score=scores[0, keep], rank=np.arange(1, int(keep.sum()) + 1))

    def _many_users(self, index: np.ndarray, k: int) -> pd.DataFrame:
        """``recommend(users=...)`` of user indices: one row per (user, rank): user_id, rank, movie_id, score."""
        items, scores = self.top_k(index, k)
        rows, ranks = np.nonzero(items >= 0)
        return pd.DataFrame({
            "user_id": self.corpus.user_ids[index][rows],
            "rank": ranks + 1,
            "movie_id": self.corpus.item_ids[items[rows, ranks]],
            "score": scores[rows, ranks],
        })  # fmt: skip

    # ------------------------------------------------------------------ one (user, movie) pair
    @torch.no_grad()
    def predict(self, user: int, movie: str | None = None, *, movie_id: int | None = None) -> float:
        """What the model says of one MovieLens user and one movie (a title as :func:`resolve_movie` reads it, or
        ``movie_id``): the predicted rating, clipped to the rating scale, where the family predicts ratings and was
        trained to (``model.predicts_ratings``: the RMSE the run reports is of these), else the ranking score
        ``recommend`` orders by. A movie the user rated is predicted too (recommend leaves those out)."""
        index = int(self.user_indices([user])[0])
        item = resolve_movie(self.corpus.item_table, movie, movie_id, where=str(self.path))
        device = self.model.device
        users = torch.tensor([index], device=device)
        if self.model.predicts_ratings:
            return float(self.model.predict_ratings(users, torch.tensor([item], device=device))[0])
        return float(self.model.score_all(users)[0, item])

    # ------------------------------------------------------------------ similar movies
    def similar(
        self, title: str | None = None, k: int = 10, min_ratings: int = 0, *, movie_id: int | None = None
    ) -> pd.DataFrame:
        """The ``k`` movies most like one (by title or ``movie_id``) by the family's own item similarity
        (:meth:`RecommenderModule.similar_items`: the cosine of its item vectors, or a neighbourhood family's
        item-item weights), the movie itself left out; ``min_ratings`` keeps only movies with at least that many
        training ratings. Columns: movie_id, title, year, genres, score (the similarity), rank."""
        k = check_k(k)
        if not self.model.compares_items():
            able = families_that(lambda cls: cls.compares_items())
            raise RunError(
                f"model={self.family} has no item embeddings to compare movies with; similar() works with runs of {able}"
            )
        query = resolve_movie(self.corpus.item_table, title, movie_id, where=str(self.path))
        with torch.no_grad():
            similarity = self.model.similar_items(query).float().cpu()  # (n_items,)
        exclude = torch.from_numpy(self.datamodule.item_popularity < min_ratings)
        exclude[query] = True
        return self._ranked(similarity, exclude, k)

    def _ranked(self, scores: torch.Tensor, exclude: torch.Tensor, k: int) -> pd.DataFrame:
        """The ``k`` best items of ``scores`` (n_items,) that ``exclude`` (n_items,) bool leaves: the item columns,
        score and rank (fewer rows when fewer items are left)."""
        scores = scores.detach().float().cpu()
        top = topk_items(scores[None], exclude.cpu()[None], k, self.tie_rank)[0].numpy()
        top = top[top >= 0]
        return self.items(top).assign(score=scores[top].numpy(), rank=np.arange(1, len(top) + 1))

    # ------------------------------------------------------------------ made-up users
    def _made_up(
        self, liked: Sequence[str], liked_ids: Sequence[int], likes_genre: Sequence[str],
        dislikes_genre: Sequence[str], k: int,
    ) -> pd.DataFrame:  # fmt: skip
        """``recommend(liked=..., liked_ids=..., likes_genre=..., dislikes_genre=...)``: see :meth:`recommend`."""
        if not scores_made_up_users(type(self.model)):
            able = families_that(scores_made_up_users)
            raise RunError(f"model={self.family} scores only users seen in training; made-up users work with: {able}")
        where = str(self.path)
        by_id = "--liked-id ID, or liked_ids=[ID]"
        found = [resolve_movie(self.corpus.item_table, title=t, where=where, by_id=by_id) for t in _as_list(liked)]
        found += [resolve_movie(self.corpus.item_table, movie_id=i, where=where) for i in _as_list(liked_ids)]
        items = np.asarray(list(dict.fromkeys(found)), dtype=np.int64)  # in the order given, each movie once
        preference = np.zeros(len(self.corpus.genre_names), dtype=np.int8)  # +1 liked, -1 disliked genre
        likes = self._genre_columns(_as_list(likes_genre))
        dislikes = self._genre_columns(_as_list(dislikes_genre))
        both = sorted(set(likes) & set(dislikes))
        if both:
            raise RunError(f"genre {self.corpus.genre_names[both[0]]} is both liked and disliked; keep one of the two")
        preference[likes], preference[dislikes] = 1, -1
        if not len(items) and not len(likes):
            raise RunError("a made-up user needs at least one liked movie (liked=, liked_ids=) or genre (likes_genre=)")
        ratings = np.full(len(items), self.model.schema.rating_high, dtype=np.float32)
        with torch.no_grad():
            scores = self.model.score_rated(np.asarray([0, len(items)]), items, ratings, preference[None])[0]
        exclude = ~torch.isfinite(scores.cpu())  # a family's -inf: never recommended (siamese: disliked genres)
        exclude[items] = True
        return self._ranked(scores, exclude, k)

    def _genre_columns(self, names: list[str]) -> list[int]:
        """Genre columns of genre names (case-insensitive); an unknown one is an error listing the genres."""
        genres = list(self.corpus.genre_names)
        column = {g.casefold(): j for j, g in enumerate(genres)}
        out = []
        for name in names:
            wanted = " ".join(str(name).split()).casefold()
            if wanted not in column:
                close = difflib.get_close_matches(wanted, list(column), n=1, cutoff=0.6)
                hint = f"did you mean {genres[column[close[0]]]}? " if close else ""
                raise RunError(f"unknown genre {name!r}; {hint}the genres of {self.path}: {', '.join(genres)}")
            out.append(column[wanted])
        return out

    # ------------------------------------------------------------------ keyword search
    def search(self, keywords: str | Sequence[str], k: int = 10) -> pd.DataFrame:
        """The ``k`` movies nearest to a keyword query (as in a public Siamese-network notebook on MovieLens
        genome tags): columns movie_id, title, year, genres, score (the cosine), rank; the descriptors the query
        was read as are in ``frame.attrs["descriptors"]``.

        ``keywords``: a list of words or one free-text string (split on whitespace). Words are matched to the
        run's descriptor vocabulary (genres, decades such as "1990s", genome and user tags) case-insensitively,
        the longest run of consecutive words first (so "twist ending" is one descriptor). A word that is none:
        with ``encoding=text`` its sentence embedding picks the nearest descriptor; else an error with a "did
        you mean". The query is the multi-hot (or mean text vector) of its descriptors, embedded by the item
        encoder exactly as an item with those descriptors (no item id row), and every movie is ranked by cosine.
        """
        k = check_k(k)
        if not searches_keywords(type(self.model)):
            able = families_that(searches_keywords)
            raise RunError(f"model={self.family} has no descriptor encoder to search with; search() works with runs of {able}")
        words = [w for part in ([keywords] if isinstance(keywords, str) else keywords) for w in str(part).split()]
        if not words:
            raise RunError("give at least one keyword, e.g. search(['war', 'drama'])")
        columns, read_as = self._descriptors(words)
        model = self.model
        with torch.no_grad():
            index = torch.as_tensor(np.unique(columns), device=model.device)
            query = model.embed_descriptors(index, torch.zeros(1, dtype=torch.long, device=model.device))[0]  # (D,)
            cosine = F.normalize(model.item_similarity_vectors(), dim=-1) @ query  # (n_items,)
        frame = self._ranked(cosine, torch.zeros(self.corpus.n_items, dtype=torch.bool), k)
        frame.attrs["descriptors"] = read_as
        return frame

    def _descriptors(self, words: list[str]) -> tuple[list[int], list[str]]:
        """Descriptor columns of query words (longest phrase first) and how each was read, in query order ("war",
        or "warfare -> war" where the text encoder chose the descriptor)."""
        vocabulary = self.model.vocabulary
        column = {v.casefold(): j for j, v in enumerate(vocabulary)}
        longest = max((len(v.split()) for v in vocabulary), default=1)
        found: list[tuple[str, int]] = []  # (word or phrase, its column; -1 while unknown)
        i = 0
        while i < len(words):  # over the query's few words, never over items
            j = next((j for j in range(min(len(words), i + longest), i, -1)
                      if " ".join(words[i:j]).casefold() in column), i + 1)  # fmt: skip
            at = column.get(" ".join(words[i:j]).casefold(), -1)
            found.append((vocabulary[at] if at >= 0 else words[i], at))
            i = j
        unknown = [phrase for phrase, j in found if j < 0]
        if unknown and self.model.mining.encoding == "text":
            chosen = iter(self.model.nearest_descriptors(unknown).tolist())
            for n, (word, j) in enumerate(found):
                if j < 0:
                    j = next(chosen)
                    found[n] = (f"{word} -> {vocabulary[j]}", j)
        elif unknown:
            word = unknown[0]
            close = difflib.get_close_matches(word.casefold(), list(column), n=3, cutoff=0.6)
            quoted = ", ".join(f"'{vocabulary[column[c]]}'" for c in close)
            counts = np.bincount(self.model.desc_index.cpu().numpy(), minlength=len(vocabulary))
            common = ", ".join(f"'{vocabulary[j]}'" for j in np.argsort(-counts, kind="stable")[:5])
            hint = f"did you mean: {quoted}?" if close else f"the most common are {common}"
            raise RunError(
                f"{word!r} is not a descriptor of {self.path} (its {len(vocabulary)} genres, decades and tags); {hint}"
            )
        return [j for _, j in found], [phrase for phrase, _ in found]
