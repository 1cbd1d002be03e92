"""The parts of the two-tower family: batched context lookups, id embeddings (plain or hashed), the two towers.

* :class:`ContextLookup` answers a batch of (user, end) queries on the tables of
  :func:`recarena.data.features.build_context_arrays` with tensor gathers only (see that module for the layout).
* :class:`IdEmbedding`: an item-id table, or the sum of T salted-hash tables of the movie id (the hashing trick of
  the "Learning RecSys through Papers Vol II" write-up and Yi et al. 2019, "Sampling-bias-corrected neural modeling for
  large corpus item recommendations").
* :class:`UserTower`: [ratings context ; genre affinities ; mean of recent positives] -> Linear -> tanh; the
  context as in the blog post "Building a Two-Tower Deep Learning Movie Recommender System in PyTorch" (2024), the
  history as in the write-up above. :class:`ItemTower` (as in that blog post): [side features -> Linear -> tanh ;
  id embedding -> Linear -> tanh].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from recarena.data.features import BLOCK, ContextArrays, collision_rates, hashed_rows


class ContextLookup(nn.Module):
    """Tables of :class:`ContextArrays` as non-persistent buffers (rebuilt from the data by ``setup``, moved with
    the module, kept out of checkpoints). Until :meth:`load`, every user has an empty context.

    Every gathered table carries one trailing dummy entry so clamped indices of empty slots stay in range.
    """

    def __init__(self, n_users: int, n_items: int, n_genres: int) -> None:
        super().__init__()
        zeros = torch.zeros(n_users + 1, dtype=torch.long)
        self.n_genres = n_genres
        self.global_mean = 0.0
        tables = {
            "ptr": zeros, "snap_ptr": zeros, "ctx_ptr": zeros, "pos_ptr": zeros,
            "items": torch.full((1,), n_items), "ratings": torch.zeros(1),
            "flat_of_row": torch.zeros(0, dtype=torch.long), "snap": torch.zeros(1, 1 + 2 * n_genres),
            "ctx_flat": torch.zeros(0, dtype=torch.long), "pos_flat": torch.zeros(0, dtype=torch.long),
            "genres": torch.zeros(n_items + 1, n_genres),
            "ctx_of_item": torch.zeros(n_items + 1, dtype=torch.long),
            "context_items": torch.zeros(0, dtype=torch.long),
        }  # fmt: skip
        for name, value in tables.items():
            self.register_buffer(name, value, persistent=False)

    def load(self, arrays: ContextArrays) -> None:
        device = self.ptr.device
        n_items = len(arrays.genres)
        pad = {"items": n_items, "ratings": 0.0}  # the dummy entry at flat position E: rating 0, zero genre row
        for name in ("ptr", "snap_ptr", "ctx_ptr", "pos_ptr", "flat_of_row", "snap", "ctx_flat", "pos_flat",
                     "context_items"):
            setattr(self, name, torch.as_tensor(getattr(arrays, name)).to(device))
        for name, value in pad.items():
            tail = np.asarray([value], dtype=getattr(arrays, name).dtype)
            setattr(self, name, torch.as_tensor(np.concatenate([getattr(arrays, name), tail])).to(device))
        genres = np.vstack([arrays.genres, np.zeros((1, arrays.genres.shape[1]), np.float32)])
        self.genres = torch.as_tensor(genres).to(device)
        ctx_of_item = np.zeros(len(genres), dtype=np.int64)  # only context items are ever looked up
        ctx_of_item[arrays.context_items] = np.arange(len(arrays.context_items))
        self.ctx_of_item = torch.as_tensor(ctx_of_item).to(device)
        self.global_mean = arrays.global_mean

    def train_ends(self, rows: torch.Tensor) -> torch.Tensor:
        """End of a training label's query: its own flat position, so its context is strictly before it."""
        ends = self.flat_of_row[rows]
        if bool((ends < 0).any()):
            raise ValueError("a training batch holds rows that are not input rows of the split")
        return ends

    def eval_ends(self, users: torch.Tensor) -> torch.Tensor:
        """End of an evaluation query: all of the user's input ratings."""
        return self.ptr[users + 1]

    def sums(self, users: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(count (B,), rating sum (B,), genre rating sums (B, G), genre counts (B, G)) over [ptr[u], end)."""
        start = self.ptr[users]
        k = (ends - start) // BLOCK
        base = self.snap[self.snap_ptr[users] + k]  # (B, 1 + 2G) sums before position k * BLOCK
        idx = (start + k * BLOCK).unsqueeze(1) + torch.arange(BLOCK - 1, device=users.device)  # (B, BLOCK-1)
        idx = torch.where(idx < ends.unsqueeze(1), idx, len(self.items) - 1)  # past the end: the dummy entry
        r = self.ratings[idx]  # (B, BLOCK-1), 0 for the dummy
        g = self.genres[self.items[idx]]  # (B, BLOCK-1, G), zero rows for the dummy
        G = self.n_genres
        rating_sum = base[:, 0] + r.sum(1)
        genre_sum = base[:, 1 : 1 + G] + torch.bmm(r.unsqueeze(1), g).squeeze(1)
        genre_count = base[:, 1 + G :] + g.sum(1)
        return (ends - start).to(r.dtype), rating_sum, genre_sum, genre_count

    def context_bag(self, users: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Ratings of context items before each end, ragged: (context index (T,), rating (T,), query of each (T,))."""
        lo = self.ctx_ptr[users]
        hi = torch.searchsorted(self.ctx_flat, ends)
        counts = hi - lo  # (B,)
        offsets = torch.cumsum(counts, 0) - counts
        bag = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)  # (T,)
        entry = lo[bag] + torch.arange(len(bag), device=users.device) - offsets[bag]
        flat = self.ctx_flat[entry]
        return self.ctx_of_item[self.items[flat]], self.ratings[flat], bag

    def recent_positives(self, users: torch.Tensor, ends: torch.Tensor, length: int) -> tuple[torch.Tensor, ...]:
        """The last ``length`` positively rated items before each end: (items (B, L), mask (B, L))."""
        hi = torch.searchsorted(self.pos_flat, ends)
        idx = hi.unsqueeze(1) - length + torch.arange(length, device=users.device)  # (B, L)
        mask = idx >= self.pos_ptr[users].unsqueeze(1)
        flat = self.pos_flat[idx.clamp(min=0)] if len(self.pos_flat) else torch.zeros_like(idx)
        return torch.where(mask, self.items[flat], 0), mask


class IdEmbedding(nn.Module):
    """Item id -> (dim,) vector: one row per item (``hash_tables=0``), or the sum of ``hash_tables`` rows, one
    per salted hash of the movie id into its own table of ``hash_size`` rows (0 = auto: a power of two >= 2 x
    n_items, where 2 tables leave ~1e-4 of items indistinguishable)."""

    def __init__(self, n_items: int, dim: int, hash_tables: int = 0, hash_size: int = 0, sparse: bool = False) -> None:
        super().__init__()
        self.hash_tables = int(hash_tables)
        self.hash_size = int(hash_size) or 1 << max(1, 2 * n_items - 1).bit_length()
        rows = self.hash_size * self.hash_tables if self.hash_tables else n_items
        self.table = nn.Embedding(rows, dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=0.1)
        keys = hashed_rows(np.arange(n_items, dtype=np.uint64), self.hash_tables, self.hash_size)
        self.register_buffer("rows", torch.as_tensor(keys), persistent=False)  # (n_items, T)

    def set_keys(self, movie_ids: np.ndarray) -> tuple[float, float]:
        """Hash the release's movie ids (not the indices); returns :func:`collision_rates`."""
        if not self.hash_tables:
            return 0.0, 0.0
        keys = hashed_rows(np.asarray(movie_ids).astype(np.uint64), self.hash_tables, self.hash_size)
        self.rows = torch.as_tensor(keys).to(self.rows.device)
        return collision_rates(keys)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        if not self.hash_tables:
            return self.table(items)  # (..., dim)
        return self.table(self.rows[items]).sum(-2)  # (..., T, dim) -> (..., dim)

    def weighted_sum(self, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_l weights[b, l] · embedding(items[b, l]): (B, L), (B, L) -> (B, dim), with no (B, L, dim) block."""
        if self.hash_tables:  # every hashed row of an item carries the item's weight
            items = self.rows[items].flatten(1)  # (B, L * T)
            weights = weights.repeat_interleave(self.hash_tables, dim=1)
        return F.embedding_bag(items, self.table.weight, mode="sum", per_sample_weights=weights,
                               sparse=self.table.sparse)  # fmt: skip


class ItemTower(nn.Module):
    """[tanh(W_f x_i + b_f) ; tanh(W_e e_i + b_e) (; b_i)]: side features and id embedding, each one tanh
    layer, concatenated (as in the PyTorch two-tower blog post); with ``bias`` a learned per-item scalar is
    appended (the user side appends a 1)."""

    def __init__(self, n_items: int, n_features: int, feature_dim: int, id_dim: int, bias: bool,
                 id_embedding: IdEmbedding | None, sparse: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("features", torch.zeros(n_items, n_features), persistent=False)  # (n_items, F)
        self.feature_layer = nn.Linear(n_features, feature_dim) if n_features and feature_dim else None
        self.id_embedding = id_embedding
        self.id_layer = nn.Linear(id_dim, id_dim) if id_embedding is not None else None
        self.bias = nn.Embedding(n_items, 1, sparse=sparse) if bias else None
        if self.bias is not None:
            nn.init.zeros_(self.bias.weight)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.feature_layer is not None:
            parts.append(torch.tanh(self.feature_layer(self.features[items])))  # (N, feature_dim)
        if self.id_layer is not None:
            parts.append(torch.tanh(self.id_layer(self.id_embedding(items))))  # (N, id_dim)
        if self.bias is not None:
            parts.append(self.bias(items))  # (N, 1)
        return torch.cat(parts, dim=-1)


class UserTower(nn.Module):
    """tanh(W_c x_ctx + W_g x_genre + W_h h + b) (; 1): one tanh layer over the concatenated user inputs.

    ``x_ctx`` (N,): the user's rating minus their mean, for the context items rated before the query (0 for the
    others), scattered from the ragged lookup into a (B, N) block.
    ``x_genre`` (G,): per-genre mean rating minus the user's mean (0 for unrated genres), as in the PyTorch blog post.
    ``h``: mean embedding of the last L positively rated items and a learned "no history" vector (the mean as in the
    "Learning RecSys through Papers Vol II" write-up).
    """

    def __init__(self, inputs: list[str], n_context: int, n_genres: int, dim: int, history: IdEmbedding | None,
                 history_length: int, bias: bool, dropout: float, input_dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.n_context = n_context if "ratings_context" in inputs else 0
        # One Linear over [x_ctx ; x_genre ; h]: the PyTorch blog post's layer, the history block joins it.
        width = history.table.embedding_dim if history is not None else 0
        self.layer = nn.Linear(self.n_context + (n_genres if self.n_context else 0) + width, dim)
        self.history = history
        self.history_length = history_length
        if history is not None:
            self.no_history = nn.Parameter(torch.zeros(width))
        self.append_one = bias
        self.dropout = nn.Dropout(dropout)
        self.input_dropout = nn.Dropout(input_dropout)

    def forward(self, lookup: ContextLookup, users: torch.Tensor, ends: torch.Tensor, mean: torch.Tensor,
                sums: tuple[torch.Tensor, ...]) -> torch.Tensor:  # fmt: skip
        """(B,) queries and the users' means as of each query -> (B, dim [+1]) user vectors."""
        inputs = []
        if self.n_context:
            # x_ctx as a dense (B, N) batch block: N context items only, never users x items.
            index, rating, bag = lookup.context_bag(users, ends)
            x_ctx = torch.zeros(len(users), self.n_context, device=users.device)
            x_ctx[bag, index] = rating - mean[bag]
            _, _, genre_sum, genre_count = sums  # (B, G) each
            x_genre = torch.where(genre_count > 0, genre_sum / genre_count.clamp(min=1) - mean.unsqueeze(1), 0.0)
            inputs += [x_ctx, x_genre]
        if self.history is not None:
            items, mask = lookup.recent_positives(users, ends, self.history_length)  # (B, L)
            summed = self.history.weighted_sum(items, mask.to(self.no_history.dtype))  # (B, width)
            inputs.append((summed + self.no_history) / (mask.sum(1, keepdim=True) + 1))  # mean with "no history"
        pre = self.layer(self.input_dropout(torch.cat(inputs, dim=-1)))  # (B, dim)
        vector = self.dropout(torch.tanh(pre))
        if self.append_one:
            vector = torch.cat([vector, torch.ones_like(vector[:, :1])], dim=-1)
        return vector
