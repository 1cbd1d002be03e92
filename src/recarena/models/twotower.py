"""Feature-based two-tower model: users are built from their rating history, never from a user id.

User tower (:class:`~recarena.models.towers.UserTower`), over the user's input ratings strictly before the label
in training and all of them at evaluation (:mod:`recarena.data.features`):

* ``ratings_context`` (as in the blog post "Building a Two-Tower Deep Learning Movie Recommender System in
  PyTorch", 2024): rating minus the user's mean for the N most-rated training movies, and per-genre mean rating
  minus the user's mean;
* ``history`` (as in the "Learning RecSys through Papers Vol II" write-up on in-batch negatives): mean embedding
  of the last L items rated >= ``history_threshold``; item ids get one row each, or (``hash_tables`` > 0) the sum
  of rows picked by several salted hashes of the movie id, as that write-up does in the retrieval set-up of Yi et
  al. 2019 ("Sampling-bias-corrected neural modeling for large corpus item recommendations"), with tables sized
  to keep collisions rare (the rate is logged);

concatenated -> Linear -> tanh. Item tower (the PyTorch blog post's): genre multi-hot (+ release year, tags) ->
Linear -> tanh, and item-id embedding -> Linear -> tanh, concatenated. With ``item_bias`` the vectors are augmented
to [u ; 1] . [v ; b_i] = u . v + b_i, so every score stays one dot product of a user and an item vector.

Ratings (``loss=mse``, the PyTorch blog post's de-biased regression): r̂ = u . v + m, where m is the user's mean
rating shrunk towards the global mean, m = (Σ r + α μ) / (n + α), over the same ratings as the context (before
the label in training, all input ratings at evaluation), so the network learns r - m and the target never
includes the label itself. RMSE/MAE are on the original scale. A user's context is a near-unique fingerprint, so
the network memorises users quickly (the PyTorch blog post saw the same); dropout on the user inputs (a denoising
regulariser) and on the user vector is what keeps it general (ML-100K random split, seed 42: validation RMSE
0.952 without either, 0.924 with both at 0.5). Ranking losses (``loss=logq``, ``inbatch``, ...) use
``score`` = u . v; ranking is ``score_all`` = U V^T.

A user never seen in training (a made-up one: ``run.recommend(liked=[...], likes_genre=[...])``) is a list of
(movie, rating) built into tables of its own and read by the same lookups and tower
(:meth:`TwoTower.rated_user_embeddings`), so it is treated exactly as a training user with those ratings.

Run: ``python train.py model=twotower`` (``split=users`` scores held-out users from their known ratings);
``python train.py -m experiment=twotower_quality`` for the ML-100K RMSE check; ``model=twotower loss=logq``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import torch

from recarena.data.features import (
    ITEM_SIDE_INPUTS,
    FeatureData,
    build_context_arrays,
    item_feature_width,
    user_context_arrays,
)
from recarena.errors import ConfigError
from recarena.losses.base import Loss
from recarena.models.base import RecommenderModule
from recarena.models.towers import ContextLookup, IdEmbedding, ItemTower, UserTower
from recarena.schema import Schema

log = logging.getLogger(__name__)
USER_INPUTS = ("ratings_context", "history")
ITEM_INPUTS = ("item_id", *ITEM_SIDE_INPUTS)


def _check(option: str, chosen: list[str], known: tuple[str, ...]) -> list[str]:
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise ConfigError(f"model.{option}={chosen} must be a non-empty list from {list(known)} (unknown: {unknown})")
    return list(chosen)


class TwoTower(RecommenderModule):
    """Two towers whose dot product is the de-biased rating (``loss=mse``) or the ranking score.

    Args:
        user_inputs: any of ``ratings_context``, ``history``.
        item_inputs: any of ``item_id``, ``genres``, ``year``, ``tags``.
        context_items: N, the most-rated training movies of the ratings context (250 in the PyTorch blog post).
        history_length, history_threshold, history_dim: L last positives (30 at rating >= 3 in the
            "Learning RecSys through Papers Vol II" write-up), their embedding size.
        hash_tables, hash_size: 0 tables = one embedding row per item; else that many salted hashes of the movie
            id into tables of ``hash_size`` rows (0 = auto) for the item-id and history embeddings.
        feature_dim, id_dim: widths of the item side-feature and id halves; the user vector is their sum.
        n_tags: columns of the tag multi-hot (the most applied tags) when ``tags`` is an item input.
        item_bias: append a learned item bias (and a constant 1 on the user side) to the vectors.
        mean_shrinkage: α of the user mean's pull towards the global mean.
        l2: λ of the penalty on the item-id embedding and bias rows of the batch (as in ``model=mf``).
        dropout: on the user vector during training.
        **kwargs: see :class:`RecommenderModule`.
    """

    provides = frozenset(
        {"ratings", "scores", "embeddings", "item_vectors", "similar_items", "item_biases", "made_up_users", "export"}
    )
    needs_user_ids = False
    test_inputs = "read"  # users are built from their ratings
    prepares = FeatureData.from_datamodule  # context tables and item features, once per corpus and split

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        user_inputs: list[str] = ("ratings_context", "history"),
        item_inputs: list[str] = ("genres", "item_id"),
        context_items: int = 250,
        history_length: int = 30,
        history_threshold: float = 3.0,
        history_dim: int = 32,
        hash_tables: int = 0,
        hash_size: int = 0,
        feature_dim: int = 25,
        id_dim: int = 25,
        n_tags: int = 50,
        item_bias: bool = True,
        mean_shrinkage: float = 5.0,
        l2: float = 0.0,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        optimizer: partial | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, loss, optimizer=optimizer, **kwargs)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        self.user_inputs = _check("user_inputs", list(user_inputs), USER_INPUTS)
        self.item_inputs = _check("item_inputs", list(item_inputs), ITEM_INPUTS)
        for option, value in (("context_items", context_items), ("history_length", history_length)):
            if int(value) < 1:
                raise ConfigError(f"model.{option} must be a positive integer, got {value}")
        self.context_items, self.history_threshold, self.n_tags = int(context_items), history_threshold, n_tags
        self.mean_shrinkage, self.l2 = float(mean_shrinkage), float(l2)
        sparse = self.sparse_embeddings(optimizer)
        self.lookup = ContextLookup(self.schema.n_users, self.schema.n_items, len(self.schema.genre_names))
        self.item_tower, dim = self._build_item_tower(sparse)
        self.user_tower = self._build_user_tower(sparse, dim)
        self._features_from: FeatureData | None = None

    def _build_item_tower(self, sparse: bool) -> tuple[ItemTower, int]:
        """Side features through a linear layer, beside an id embedding (hashed or not): ``model.item_inputs``;
        and its output width (without the bias column)."""
        h, n_items = self.hparams, self.schema.n_items
        n_features = item_feature_width(self.item_inputs, len(self.schema.genre_names), self.n_tags)
        feature_dim = h.feature_dim if n_features else 0
        ids = IdEmbedding(n_items, h.id_dim, h.hash_tables, h.hash_size, sparse) if "item_id" in self.item_inputs else None
        dim = feature_dim + (h.id_dim if ids is not None else 0)
        if dim == 0:
            raise ConfigError(f"model.item_inputs={self.item_inputs} give the item tower no width")
        return ItemTower(n_items, n_features, feature_dim, h.id_dim, h.item_bias, ids, sparse), dim

    def _build_user_tower(self, sparse: bool, dim: int) -> UserTower:
        """The user's inputs (``model.user_inputs``) into the item tower's width ``dim``."""
        h, n_items = self.hparams, self.schema.n_items
        history = (IdEmbedding(n_items, h.history_dim, h.hash_tables, h.hash_size, sparse)
                   if "history" in self.user_inputs else None)  # fmt: skip
        return UserTower(self.user_inputs, min(self.context_items, n_items), len(self.schema.genre_names), dim,
                         history, h.history_length, h.item_bias, h.dropout, h.input_dropout)  # fmt: skip

    # ------------------------------------------------------------------ features (training part only)
    def attach(self, dm: Any) -> None:
        super().attach(dm)
        data: FeatureData = dm.prepared
        if self._features_from is not data:  # fit, validate and test share one split: load its tables once
            self.load_features(data, dm.corpus)

    def read_inputs(self, corpus: Any, split: Any, rows: np.ndarray) -> None:
        """Users' contexts end after every rating the test may know (statistics stay the training ones)."""
        extra = np.setdiff1d(rows, split.train)  # known + validation rows
        arrays = build_context_arrays(corpus, split.train, extra, self.context_items, self.history_threshold)
        self.lookup.load(arrays)
        self._features_from = None  # a later attach() loads the training tables again

    def build_features(self, corpus: Any, split: Any) -> None:
        """Contexts from the split's training rows (+ known rows of held-out users); item side features: what
        ``attach`` loads from the datamodule's :class:`FeatureData`, for a model used without one."""
        self.load_features(FeatureData(corpus, split, self.item_inputs, self.context_items, self.history_threshold,
                                       self.n_tags), corpus)  # fmt: skip

    def load_features(self, data: FeatureData, corpus: Any) -> None:
        """The prepared tables into the model's lookups and item tower; hashed id rows keyed by MovieLens id."""
        arrays = data.contexts
        self.lookup.load(arrays)
        self.item_tower.features = torch.as_tensor(data.item_features).to(self.item_tower.features.device)
        for name, ids in (("item", self.item_tower.id_embedding), ("history", self.user_tower.history)):
            if ids is not None and ids.hash_tables:
                per_table, full = ids.set_keys(corpus.item_ids)
                log.info("twotower %s hashing: %d tables x %d rows; %.1f%% of items share a row per table, "
                         "%.3f%% share all rows", name, ids.hash_tables, ids.hash_size, 100 * per_table, 100 * full)
        log.info("twotower features: %d input ratings, %d snapshots, %d context-item ratings, %d positives",
                 len(arrays.items), len(arrays.snap), len(arrays.ctx_flat), len(arrays.pos_flat))  # fmt: skip
        self._features_from = data

    # ------------------------------------------------------------------ towers
    def _users(
        self, users: torch.Tensor, ends: torch.Tensor, lookup: ContextLookup | None = None,
        stated: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """User vectors (B, D) and shrunk mean ratings (B,) of queries (user, end of their context) on ``lookup``
        (the training tables by default). ``stated`` (B, G): a per-genre mean rating to use instead of the one of
        the rated movies (NaN: none stated), i.e. x_genre = stated - mean for those genres."""
        lookup = self.lookup if lookup is None else lookup
        sums = lookup.sums(users, ends)
        if stated is not None:
            given = ~torch.isnan(stated)
            count, rating_sum, genre_sum, genre_count = sums
            sums = (count, rating_sum, torch.where(given, stated, genre_sum), torch.where(given, 1.0, genre_count))
        count, rating_sum = sums[0], sums[1]
        alpha = self.mean_shrinkage
        mean = (rating_sum + alpha * lookup.global_mean) / (count + alpha).clamp(min=1e-6)
        return self.user_tower(lookup, users, ends, mean, sums), mean

    def _train_users(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._users(batch["users"], self.lookup.train_ends(batch["rows"]))

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._train_users(batch)[0]

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_tower(items)

    def user_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """Evaluation-time user vectors (B, D): the context of all their input ratings."""
        return self._users(users, self.lookup.eval_ends(users))[0]

    def rated_user_embeddings(
        self, ptr: np.ndarray, items: np.ndarray, ratings: np.ndarray, genres: np.ndarray | None = None
    ) -> torch.Tensor:
        """(B, D) vectors of B users given by their ratings alone, as :meth:`user_embeddings` builds a training
        user from all of their input ratings: user b rated ``items[ptr[b]:ptr[b+1]]`` with ``ratings[...]``,
        oldest first. The lists become context tables of their own (:func:`user_context_arrays`, with this
        run's N context movies and global mean) read by the same lookups and tower as training and evaluation:

        * mean m = (Σ r + α μ) / (n + α), μ the training mean (with no rating, m = μ);
        * x_ctx = r - m for the rated movies among the N context movies; x_genre = the mean rating of the rated
          movies of each genre minus m, where ``genres`` (B, G) states nothing (0); a liked genre (+1) counts as
          rated at the top of the scale (x_genre = rating_high - m), a disliked one (-1) at the bottom
          (rating_low - m), whatever the rated movies of that genre say;
        * history = the last L items rated >= ``history_threshold``.
        """
        device = self.lookup.ptr.device
        genre_table = self.lookup.genres[:-1].cpu().numpy()  # (n_items, G) without the dummy row
        arrays = user_context_arrays(ptr, items, ratings, genre_table, self.lookup.context_items.cpu().numpy(),
                                     self.history_threshold, self.lookup.global_mean)  # fmt: skip
        lookup = ContextLookup(len(ptr) - 1, self.schema.n_items, genre_table.shape[1]).to(device)
        lookup.load(arrays)
        stated = None
        if genres is not None:
            scale = torch.full(genre_table.shape[1:], float("nan"), device=device)
            preference = torch.as_tensor(np.asarray(genres), device=device)
            stated = torch.where(preference > 0, self.schema.rating_high, scale)
            stated = torch.where(preference < 0, self.schema.rating_low, stated)
        users = torch.arange(len(ptr) - 1, device=device)
        return self._users(users, lookup.eval_ends(users), lookup, stated)[0]

    def score_rated(
        self, ptr: np.ndarray, items: np.ndarray, ratings: np.ndarray, genres: np.ndarray | None = None
    ) -> torch.Tensor:
        """(B, n_items) ranking scores of users never seen in training (:meth:`rated_user_embeddings`), compared
        with the items as :meth:`score_all` compares training users."""
        return self.loss_fn.compare(self.rated_user_embeddings(ptr, items, ratings, genres), self.item_embeddings())

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors (N, D), all items when None."""
        if items is None:
            items = torch.arange(self.schema.n_items, device=self.item_tower.features.device)
        return self.item_tower(items)

    # ------------------------------------------------------------------ family API
    def rating(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors, mean = self._train_users(batch)
        return (vectors * self.item_tower(batch["items"])).sum(-1) + mean  # (B,)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        vectors, mean = self._users(users, self.lookup.eval_ends(users))
        return (vectors * self.item_tower(items)).sum(-1) + mean  # (N,)

    def score(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return (self.user_vectors(batch) * self.item_tower(items)).sum(-1)  # (B,)

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_items) = U V^T (or cosine, as the loss compares them); the user's mean is a per-row constant,
        so it changes no ranking."""
        return self.loss_fn.compare(self.user_embeddings(users), self.item_embeddings(), out)

    def item_biases(self) -> torch.Tensor | None:
        """``(n_items,)`` learned item biases (``item_bias``; ``recarena explain``), None without them."""
        return None if self.item_tower.bias is None else self.item_tower.bias.weight.squeeze(-1)

    def item_similarity_vectors(self) -> torch.Tensor:
        """The item tower's output without its bias column (``item_bias``)."""
        vectors = self.item_embeddings()
        return vectors[:, :-1] if self.item_tower.bias is not None else vectors

    def penalty(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tower = self.item_tower
        if not self.l2:
            return torch.zeros((), device=self.device)
        sq = torch.zeros(len(batch["items"]), device=self.device)
        if tower.id_embedding is not None:
            sq = sq + tower.id_embedding(batch["items"]).pow(2).sum(-1)
        if tower.bias is not None:
            sq = sq + tower.bias(batch["items"]).squeeze(-1).pow(2)
        return self.l2 * sq.mean()
