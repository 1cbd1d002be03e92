"""Each gradient-trained family's maths in plain PyTorch: the "bare loop" side of the benchmarks.

A bare model holds its own parameters and computes its family's training loss on a dict of the training view's
columns (``columns`` names them) with plain tensor ops: no :class:`~recarena.models.base.RecommenderModule`, no
recarena loss, no Lightning. The benchmarks step it with a hand-written loop (permute, slice, step) beside recarena
on the same tensors, so their ratio is the whole cost of recarena's module, loss, batches and Lightning.

The feature families read the data tables recarena prepares for them (the datamodule's ``prepared``): the
two-tower's users are gathered by :class:`~recarena.models.towers.ContextLookup` from the context tables, and the
Siamese encoder's items are their descriptor bags. Those gathers are the data layout, not the model; the towers,
encoders and losses are written out here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from recarena.models.layers import rating_range
from recarena.models.mlp import embedding_size
from recarena.models.towers import ContextLookup

RATINGS = ("users", "items", "ratings")


class BareMF(nn.Module):
    """Biased matrix factorisation (Koren et al. 2009) with a sigmoid range, in plain PyTorch: the maths of
    ``model=mf loss=mse`` (per-rating L2 on the touched rows) without recarena's module, loss or batches."""

    columns = RATINGS

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, y_range: tuple[float, float],
                 l2: float, sparse: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.p, self.q = nn.Embedding(n_users, dim, sparse=sparse), nn.Embedding(n_items, dim, sparse=sparse)
        self.b_u, self.b_i = nn.Embedding(n_users, 1, sparse=sparse), nn.Embedding(n_items, 1, sparse=sparse)
        for table in (self.p, self.q):
            nn.init.normal_(table.weight, std=init_std)
        for table in (self.b_u, self.b_i):
            nn.init.zeros_(table.weight)
        self.low, self.high, self.l2 = y_range[0], y_range[1], l2

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items = batch["users"], batch["items"]
        p, q = self.p(users), self.q(items)
        b_u, b_i = self.b_u(users).squeeze(-1), self.b_i(items).squeeze(-1)
        pred = self.low + (self.high - self.low) * torch.sigmoid((p * q).sum(-1) + b_u + b_i)
        penalty = (p.pow(2).sum(-1) + q.pow(2).sum(-1) + b_u.pow(2) + b_i.pow(2)).mean()
        return F.mse_loss(pred, batch["ratings"]) + self.l2 * penalty


class BareBPRMF(BareMF):
    """MF ranked by BPR (Rendle et al. 2009) in plain PyTorch: the maths of ``model=mf loss=bpr``. Each positive
    (u, i) against ``k`` items drawn uniformly, those that are u's training positives redrawn (``exclude_seen``,
    membership by binary search in the sorted keys u * n_items + i), -log σ(s(u,i) - s(u,j)) with s the biased dot
    product, plus the L2 of the positive's rows."""

    columns = ("users", "items")

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, l2: float, k: int,
                 seen: torch.Tensor | None) -> None:  # fmt: skip
        super().__init__(n_users, n_items, dim, init_std, (0.0, 1.0), l2)
        self.n_items, self.k = n_items, k
        self.register_buffer("seen", seen, persistent=False)  # buffers follow .to(device)

    def negatives(self, users: torch.Tensor) -> torch.Tensor:
        drawn = torch.randint(self.n_items, users.shape, device=users.device)
        for _ in range(20 if self.seen is not None else 0):
            keys = users * self.n_items + drawn
            clash = self.seen[torch.searchsorted(self.seen, keys).clamp_(max=len(self.seen) - 1)] == keys
            if not bool(clash.any()):
                break
            drawn = torch.where(clash, torch.randint(self.n_items, users.shape, device=users.device), drawn)
        return drawn

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items = batch["users"], batch["items"]
        p, q = self.p(users), self.q(items)
        b_u, b_i = self.b_u(users).squeeze(-1), self.b_i(items).squeeze(-1)
        positive = (p * q).sum(-1) + b_u + b_i  # (B,)
        users_k = users.repeat(self.k)  # negative k of row r at k * B + r
        negative = self.negatives(users_k)
        score = (self.p(users_k) * self.q(negative)).sum(-1) + self.b_u(users_k).squeeze(-1) + self.b_i(negative).squeeze(-1)
        penalty = (p.pow(2).sum(-1) + q.pow(2).sum(-1) + b_u.pow(2) + b_i.pow(2)).mean()
        return -F.logsigmoid(positive[None, :] - score.view(self.k, -1)).mean() + self.l2 * penalty


class BareMLP(nn.Module):
    """The collaborative MLP (fastai's, Howard & Gugger ch. 8) in plain PyTorch: user and item embeddings
    concatenated, through ReLU/dropout layers to a sigmoid range, L2 on the touched rows: the maths of
    ``model=mlp loss=mse``."""

    columns = RATINGS

    def __init__(self, n_users: int, n_items: int, dims: tuple[int, int], hidden: list[int], dropout: float,
                 init_std: float, y_range: tuple[float, float], l2: float) -> None:  # fmt: skip
        super().__init__()
        self.p, self.q = nn.Embedding(n_users, dims[0]), nn.Embedding(n_items, dims[1])
        for table in (self.p, self.q):
            nn.init.normal_(table.weight, std=init_std)
        widths = [sum(dims), *hidden, 1]
        layers: list[nn.Module] = [nn.Linear(widths[0], widths[1])]
        for width_in, width_out in zip(widths[1:-1], widths[2:], strict=True):
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(width_in, width_out)]
        self.net = nn.Sequential(*layers)
        self.low, self.high, self.l2 = y_range[0], y_range[1], l2

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        p, q = self.p(batch["users"]), self.q(batch["items"])
        pred = self.low + (self.high - self.low) * torch.sigmoid(self.net(torch.cat([p, q], -1)).squeeze(-1))
        penalty = (p.pow(2).sum(-1) + q.pow(2).sum(-1)).mean()
        return F.mse_loss(pred, batch["ratings"]) + self.l2 * penalty


class BareTwoTower(nn.Module):
    """The feature two-tower (``model=twotower`` with its default inputs: ratings context and history for users,
    genres and item id for items, item bias) in plain PyTorch, under ``loss=mse``, ``inbatch`` or ``logq``.

    User r (the context strictly before the training row, gathered by recarena's ``ContextLookup``; the blog post
    "Building a Two-Tower Deep Learning Movie Recommender System in PyTorch", 2024, and the "Learning RecSys
    through Papers Vol II" write-up): m = (Σ r + α μ) / (n + α); u = [tanh(W [x_ctx ; x_genre ; h] + b) ; 1] with
    x_ctx the context ratings minus m, x_genre the per-genre mean minus m, h the mean of the last L positives'
    embeddings and a "no history" vector. Item: v = [tanh(W_f g_i + b_f) ; tanh(W_e e_i + b_e) ; b_i].
    ``mse``: (u . v + m - r)²; ``inbatch``: cross-entropy of scale · cos(u, v_c) over the batch's distinct
    positives; ``logq``: the same minus log Q(c) = log(1 - (1 - p_c)^B), p_c the item's share of the training
    positives (Yi et al. 2019). Each adds λ times the batch mean of |e_i|² + b_i² (``model.l2``).
    """

    def __init__(self, data: Any, n_items: int, m: Any, loss: Any, train: dict[str, torch.Tensor]) -> None:
        super().__init__()
        n_genres = data.contexts.genres.shape[1]
        self.lookup = ContextLookup(0, n_items, n_genres)
        self.lookup.load(data.contexts)
        self.register_buffer("features", torch.as_tensor(data.item_features), persistent=False)  # (n_items, F)
        self.n_context, self.length, self.alpha = min(int(m.context_items), n_items), int(m.history_length), float(m.mean_shrinkage)
        self.l2 = float(m.l2)
        self.feature_layer = nn.Linear(self.features.shape[1], int(m.feature_dim))
        self.id_table, self.id_layer = nn.Embedding(n_items, int(m.id_dim)), nn.Linear(int(m.id_dim), int(m.id_dim))
        self.bias = nn.Embedding(n_items, 1)
        self.history = nn.Embedding(n_items, int(m.history_dim))
        for table in (self.id_table, self.history):
            nn.init.normal_(table.weight, std=0.1)
        nn.init.zeros_(self.bias.weight)
        self.no_history = nn.Parameter(torch.zeros(int(m.history_dim)))
        width = self.n_context + n_genres + int(m.history_dim)
        self.user_layer = nn.Linear(width, int(m.feature_dim) + int(m.id_dim))
        self.input_dropout, self.dropout = nn.Dropout(float(m.input_dropout)), nn.Dropout(float(m.dropout))
        self.kind = loss._target_.rsplit(".", 1)[-1]
        self.columns = RATINGS + ("rows",) if self.kind == "MSELoss" else ("users", "items", "rows")
        self.scale, self.cosine = float(loss.get("scale", 1.0)), loss.get("similarity", "dot") == "cosine"
        share = torch.bincount(train["items"], minlength=n_items).double() / len(train["items"])
        self.register_buffer("log1m_p", torch.log1p(-share.clamp(max=1 - 1e-7)).float(), persistent=False)  # log(1 - p_c)

    def users(self, users: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lookup, ends = self.lookup, self.lookup.flat_of_row[rows]
        count, rating_sum, genre_sum, genre_count = lookup.sums(users, ends)
        mean = (rating_sum + self.alpha * lookup.global_mean) / (count + self.alpha)
        index, rating, bag = lookup.context_bag(users, ends)
        x_ctx = torch.zeros(len(users), self.n_context, device=users.device)
        x_ctx[bag, index] = rating - mean[bag]
        x_genre = torch.where(genre_count > 0, genre_sum / genre_count.clamp(min=1) - mean[:, None], 0.0)
        items, mask = lookup.recent_positives(users, ends, self.length)
        weights = mask.float()
        summed = F.embedding_bag(items, self.history.weight, mode="sum", per_sample_weights=weights)
        h = (summed + self.no_history) / (weights.sum(1, keepdim=True) + 1)
        u = self.dropout(torch.tanh(self.user_layer(self.input_dropout(torch.cat([x_ctx, x_genre, h], -1)))))
        return torch.cat([u, torch.ones_like(u[:, :1])], -1), mean

    def items(self, items: torch.Tensor) -> torch.Tensor:
        genres = torch.tanh(self.feature_layer(self.features[items]))
        ids = torch.tanh(self.id_layer(self.id_table(items)))
        return torch.cat([genres, ids, self.bias(items)], -1)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u, mean = self.users(batch["users"], batch["rows"])
        items = batch["items"]
        penalty = self.l2 * (self.id_table(items).pow(2).sum(-1) + self.bias(items).squeeze(-1).pow(2)).mean()
        if self.kind == "MSELoss":
            return F.mse_loss((u * self.items(items)).sum(-1) + mean, batch["ratings"]) + penalty
        columns, labels = torch.unique(batch["items"], return_inverse=True)
        v = self.items(columns)
        if self.cosine:
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
        logits = self.scale * u @ v.T  # (B, C)
        if self.kind == "LogQCorrectedSoftmaxLoss":
            log_miss = len(batch["items"]) * self.log1m_p[columns]
            logits = logits - torch.log((-torch.expm1(log_miss)).clamp_min(1e-12))
        return F.cross_entropy(logits, labels) + penalty


class BareSiamese(nn.Module):
    """The Siamese item encoder (``model=siamese``, multi-hot descriptors) under the triplet loss (Schroff et al.
    2015), in plain PyTorch: f(i) = normalise(MLP(W x_i + b + e_i)), W x_i the sum of the item's descriptor rows
    (a padded bag per item), e_i its id row; mean of max(0, |f(a) - f(p)| - |f(a) - f(n)| + margin)."""

    columns = ("anchors", "positives", "negatives")

    def __init__(self, descriptors: Any, n_items: int, m: Any, margin: float) -> None:
        super().__init__()
        n_descriptors = descriptors.shape[1]
        lengths = np.diff(descriptors.indptr)
        bags = np.full((n_items, max(int(lengths.max(initial=0)), 1)), n_descriptors, dtype=np.int64)
        bags[np.repeat(np.arange(n_items), lengths), np.arange(len(descriptors.indices)) - np.repeat(
            descriptors.indptr[:-1], lengths)] = descriptors.indices  # fmt: skip
        self.register_buffer("bags", torch.as_tensor(bags), persistent=False)  # (n_items, longest bag), zero-row padded
        widths = [int(w) for w in m.hidden] + [int(m.out_dim)]
        self.first = nn.EmbeddingBag(n_descriptors + 1, widths[0], mode="sum", padding_idx=n_descriptors)
        nn.init.normal_(self.first.weight, std=max(n_descriptors, 1) ** -0.5)
        self.first_bias = nn.Parameter(torch.zeros(widths[0]))
        self.id_rows = nn.Embedding(n_items, widths[0]) if m.item_ids else None
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.ReLU(), nn.Linear(w_in, w_out)]
        self.head = nn.Sequential(*layers)
        self.margin = float(margin)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        h = self.first(self.bags[items]) + self.first_bias
        if self.id_rows is not None:
            h = h + self.id_rows(items)
        return F.normalize(self.head(h), dim=-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        a, p, n = (self.encode(batch[name]) for name in self.columns)
        return F.triplet_margin_loss(a, p, n, margin=self.margin)


def bare_maths(cfg: Any, schema: Any, dm: Any = None) -> nn.Module | None:
    """The family's maths as a bare model (``columns``, ``loss(batch)``) where one is written: MF and the MLP
    under ``loss=mse``, MF under ``loss=bpr`` (its ``exclude_seen`` reads the training view), the two-tower under
    ``mse``, ``inbatch`` and ``logq`` and the Siamese encoder under ``triplet`` (they read the prepared data of
    the datamodule ``dm``); None otherwise."""
    m, model, loss = cfg.model, cfg.model._target_.rsplit(".", 1)[-1], cfg.loss._target_.rsplit(".", 1)[-1]
    if (model, loss) == ("MatrixFactorization", "BPRLoss"):
        train = dm.train_tensors
        seen = torch.sort(train["users"] * schema.n_items + train["items"]).values if cfg.loss.exclude_seen else None
        return BareBPRMF(schema.n_users, schema.n_items, int(m.n_factors), float(m.init_std), float(m.l2),
                         int(cfg.loss.n_negatives), seen)  # fmt: skip
    if (model, loss) == ("MatrixFactorization", "MSELoss"):
        y_range = rating_range(m.y_range, schema.rating_low, schema.rating_high)
        return BareMF(schema.n_users, schema.n_items, int(m.n_factors), float(m.init_std), y_range, float(m.l2))
    if (model, loss) == ("CollabMLP", "MSELoss"):
        y_range = rating_range(m.y_range, schema.rating_low, schema.rating_high)
        dims = (int(m.user_dim) if m.user_dim is not None else embedding_size(schema.n_users),
                int(m.item_dim) if m.item_dim is not None else embedding_size(schema.n_items))  # fmt: skip
        return BareMLP(schema.n_users, schema.n_items, dims, [int(h) for h in m.hidden], float(m.dropout),
                       float(m.init_std), y_range, float(m.l2))  # fmt: skip
    if model == "TwoTower" and loss in {"MSELoss", "InBatchSoftmaxLoss", "LogQCorrectedSoftmaxLoss"} and _plain_towers(m):
        return BareTwoTower(dm.prepared, schema.n_items, m, cfg.loss, dm.train_tensors)
    if (model, loss) == ("Siamese", "TripletLoss") and m.encoding == "multi_hot":
        return BareSiamese(dm.prepared.descriptors, schema.n_items, m, float(cfg.loss.margin))
    return None


def _plain_towers(m: Any) -> bool:
    """The two-tower settings :class:`BareTwoTower` writes out (the conf/model/twotower.yaml defaults the family
    presets keep): both user inputs, genres and id for items, item bias, unhashed ids."""
    return (list(m.user_inputs) == ["ratings_context", "history"] and sorted(m.item_inputs) == ["genres", "item_id"]
            and m.item_bias and not m.hash_tables)  # fmt: skip
