"""torchmetrics metrics shared by every model family: full-catalog ranking and rating prediction.

Both are :class:`torchmetrics.Metric` objects, so they run inside Lightning's validation/test loops on any
device, and under DDP their states are summed across ranks by torchmetrics before ``compute()``.

Ranking metric definitions (used verbatim by the README)
--------------------------------------------------------
For every evaluated user ``u`` the model scores the whole catalog; the user's *excluded* items (training
items, and for the test split also validation items, plus any ``known`` items) are removed, and the
remaining items are ranked by score, highest first, ties broken by a seeded random order of the items (the same
for every family of a run seed, ``eval.tie_seed``; by lower item index when no seed is given). ``L_K(u)`` is the top
``K`` of that ranking (shorter when fewer than ``K`` items remain). ``Rel(u)`` is the set of the user's
held-out items rated ``>= relevance_threshold`` (every held-out item when the threshold is ``None``).
``hit_i = 1`` when the item at rank ``i`` (``i = 1..K``) is in ``Rel(u)``, else 0 (also 0 at ranks past the
end of a short list).

Users with ``Rel(u)`` empty cannot be scored by these metrics; they are *skipped* and counted in
``users_skipped``. The users that are scored are counted in ``users_ranked``, and each accuracy metric is
the mean of its per-user value over the ranked users:

* ``recall@K``    = sum_i hit_i / |Rel(u)|  (the denominator is the full |Rel(u)|, not min(K, |Rel(u)|), so
  a user with more than K relevant items cannot reach 1).
* ``precision@K`` = sum_i hit_i / K  (always divided by K, even if the list is shorter).
* ``hit_rate@K``  = 1 if sum_i hit_i > 0 else 0.
* ``mrr@K``       = 1 / (rank of the first hit) if there is a hit within the top K, else 0.
* ``ndcg@K``      = DCG@K / IDCG@K with binary gains: DCG@K = sum_{i=1..K} hit_i / log2(i + 1), and
  IDCG@K = sum_{i=1..min(K, |Rel(u)|)} 1 / log2(i + 1), the DCG of an ideal list that puts all relevant
  items first (it can hold at most K of them, hence the min).

Beyond-accuracy metrics, over the top-K lists of the same ranked users:

* ``coverage@K``   = |union over users of L_K(u)| / n_items (n_items = the whole catalog).
* ``popularity@K`` = mean training popularity (number of training ratings) of the recommended items, averaged
  over every recommended (user, rank) slot.
* ``long_tail@K``  = share of recommended (user, rank) slots holding a long-tail item. The *head* is the
  smallest set of most-popular items that together hold at least ``head_share`` of all training ratings
  (items sorted by training count, descending, ties by lower item index); every other item is long tail.

When no user is ranked the accuracy metrics are NaN (0/0), coverage is 0 and popularity/long_tail are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError
from torchmetrics.utilities import dim_zero_cat

from recarena.evaluation.ranking import exclusion_pairs, in_sorted, seeded_tie_rank, topk_items
from recarena.evaluation.registry import (
    ACCURACY_METRICS,
    BEYOND_METRICS,
    COUNTS,
    PER_USER_METRICS,
    RATING_METRICS,
)


def metric_names(ks: Sequence[int], ratings: bool) -> list[str]:
    """Names of every metric an evaluation logs (before its ``val/`` or ``test/`` prefix): each ranking metric at
    each K, the user counts, and RMSE/MAE when the family predicts ratings."""
    ranking = [f"{name}@{k}" for name in (*ACCURACY_METRICS, *BEYOND_METRICS) for k in ks]
    return [*(RATING_METRICS if ratings else ()), *ranking, *COUNTS]


def head_mask(item_popularity: torch.Tensor, head_share: float) -> torch.Tensor:
    """Bool ``(n_items,)``: the head, the fewest most-popular items holding ``>= head_share`` of all ratings.

    Items are sorted by popularity, descending, ties by lower index (stable sort); item at sorted position
    ``p`` is in the head iff the items before it hold less than ``head_share`` of the total, i.e. it is
    still needed to reach the share. Zero-popularity items are never head. A tiny relative tolerance keeps
    a prefix that reaches the share exactly (e.g. 0.8 of 100 ratings) from pulling one more item in.
    """
    pop = torch.as_tensor(item_popularity, dtype=torch.float64).cpu()
    total = float(pop.sum())
    mask = torch.zeros(pop.shape[0], dtype=torch.bool)
    if total <= 0 or head_share <= 0:
        return mask
    order = torch.sort(pop, descending=True, stable=True).indices
    sorted_pop = pop[order]
    before = torch.cumsum(sorted_pop, 0) - sorted_pop  # ratings held by the more popular items
    in_head = (before < head_share * total * (1 - 1e-12)) & (sorted_pop > 0)
    mask[order[in_head]] = True
    return mask


def _checked_popularity(ks: list[int], n_items: int, item_popularity: Any, head_share: float) -> torch.Tensor:
    """The training counts as a float64 CPU vector, after checking the evaluator's settings (one clear line each)."""
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise ValueError(f"eval.ks must be distinct positive integers, got {ks}: e.g. [10, 20]")
    if int(n_items) < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    if not 0.0 <= float(head_share) <= 1.0:
        raise ValueError(f"eval.head_share must lie in [0, 1], got {head_share}")
    pop = torch.as_tensor(item_popularity, dtype=torch.float64).detach().cpu().reshape(-1)
    if pop.shape[0] != int(n_items):
        raise ValueError(f"item_popularity has {pop.shape[0]} entries, expected n_items={n_items}")
    if bool((pop < 0).any()) or not bool(torch.isfinite(pop).all()):
        raise ValueError("item_popularity must hold finite non-negative training counts")
    return pop


def _ranking_constants(ks: list[int], pop: torch.Tensor, head_share: float) -> dict[str, torch.Tensor]:
    """What every chunk's ranking metrics read: discounts, ideal DCGs, per-K position masks, popularity."""
    k_max = max(ks)
    ranks = torch.arange(1, k_max + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1.0)  # 1 / log2(i + 1) for rank i = 1..k_max
    # idcg[m] = DCG of an ideal list with m relevant items on top = sum_{i=1..m} 1/log2(i+1); NDCG@K
    # uses idcg[min(K, |Rel|)] because a list of length K holds at most K relevant items.
    idcg = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(discount, 0)])
    ks_t = torch.tensor(ks, dtype=torch.int64)
    # prefix[j, p]: rank position p (0-based) lies inside the top ks[j]. Per-K sums are masked sums over
    # positions -- no float cumsum, which has no deterministic CUDA kernel.
    prefix = torch.arange(k_max)[None, :] < ks_t[:, None]
    return {"popularity": pop, "long_tail": ~head_mask(pop, head_share), "discount": discount, "idcg": idcg,
            "ks": ks_t, "prefix": prefix}  # fmt: skip


class RankingMetrics(Metric):
    """Full-catalog top-K ranking metrics, accumulated over user chunks (definitions: module docstring).

    Args:
        ks: cut-offs (``eval.ks``), e.g. ``[10, 20]``.
        n_items: catalog size; ``scores`` passed to :meth:`update` are ``(B, n_items)``.
        item_popularity: ``(n_items,)`` training rating counts per item (popularity and the long-tail head).
        head_share: share of training ratings held by the head (``eval.head_share``).
        relevance_threshold: held-out ratings ``>=`` this are relevant; ``None``: all held-out items.
        keep_per_user: also keep every ranked user's values for :meth:`per_user` (memory ~ users x columns).
        tie_seed: seed of the random item order that breaks equal scores (``eval.tie_seed``, the run seed by
            default); None: lower item index first.

    ``update(scores, batch)`` takes one chunk's scores and its batch dict (contract in
    :mod:`recarena.data.heldout`); everything is vectorised over the chunk and runs on the batch's
    device. ``compute()`` returns a flat dict ``{"recall@10": t, ..., "users_ranked": t, "users_skipped": t}``
    of float64 scalar tensors (counts too, so the dict can go straight to ``log_dict``); the caller adds the
    ``val/`` / ``test/`` prefix. Float64 states: not for MPS.
    """

    is_differentiable = False
    higher_is_better = None  # mixed: accuracy up, popularity down
    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int],
        n_items: int,
        item_popularity: Any,
        head_share: float = 0.8,
        relevance_threshold: float | None = 4.0,
        keep_per_user: bool = False,
        tie_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        ks = [int(k) for k in ks]
        pop = _checked_popularity(ks, n_items, item_popularity, head_share)
        self.tie_seed = None if tie_seed is None else int(tie_seed)
        self.ks = ks
        self.n_items = int(n_items)
        self.head_share = float(head_share)
        self.relevance_threshold = None if relevance_threshold is None else float(relevance_threshold)
        self.keep_per_user = False  # track_per_user() below turns it on
        self.k_max = max(ks)
        # Constants as plain CPU tensors (not buffers: a module-wide ``.half()``/``.to(dtype)`` must not
        # round them) and copied to the scores' device on first use there.
        self._const_cpu = _ranking_constants(ks, pop, self.head_share)
        if self.tie_seed is not None:
            self._const_cpu["tie_rank"] = seeded_tie_rank(self.n_items, self.tie_seed)
        self._const_cache: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._add_sum_states()
        if keep_per_user:
            self.track_per_user()

    def _add_sum_states(self) -> None:
        """Per-K sums over the ranked users (summed across processes under DDP), and the user counts."""
        n_k, f64 = len(self.ks), torch.float64
        for name in ACCURACY_METRICS:
            self.add_state(f"{name}_sum", default=torch.zeros(n_k, dtype=f64), dist_reduce_fx="sum")
        self.add_state("popularity_sum", default=torch.zeros(n_k, dtype=f64), dist_reduce_fx="sum")
        self.add_state("long_tail_slots", default=torch.zeros(n_k, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("slots", default=torch.zeros(n_k, dtype=torch.int64), dist_reduce_fx="sum")
        # Times each item was recommended in a top-K list (coverage = share of items with a non-zero count).
        self.add_state(
            "rec_count", default=torch.zeros(n_k, self.n_items, dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state("users_ranked", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("users_skipped", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def track_per_user(self) -> None:
        """Keep every ranked user's values for :meth:`per_user` from the next ``update`` on: what
        ``keep_per_user=True`` does, for a metric someone else built (the per-user test file's callback,
        :mod:`recarena.evaluation.per_user`, turns it on for the test loop). Idempotent."""
        if self.keep_per_user:
            return
        self.keep_per_user = True
        self.add_state("pu_user", default=[], dist_reduce_fx="cat")
        self.add_state("pu_n_relevant", default=[], dist_reduce_fx="cat")
        self.add_state("pu_values", default=[], dist_reduce_fx="cat")

    def _const(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._const_cache:
            self._const_cache[device] = {k: v.to(device) for k, v in self._const_cpu.items()}
        return self._const_cache[device]

    def update(self, scores: torch.Tensor, batch: Mapping[str, torch.Tensor],  # type: ignore[override]
               overwrite: bool = False) -> None:  # fmt: skip
        """Accumulate one chunk: ``scores`` ``(B, n_items)`` for ``batch["users"]`` (row r = users[r]). Rank, then
        score the ranked users' lists (accuracy and beyond-accuracy), then add them to the states.
        ``overwrite=True``: ``scores`` is scratch the metric may write into (see :func:`topk_items`)."""
        n_rows = batch["users"].shape[0]
        if scores.shape != (n_rows, self.n_items):
            raise ValueError(
                f"scores must be (B, n_items) = ({n_rows}, {self.n_items}), got {tuple(scores.shape)}"
            )
        c = self._const(scores.device)
        top, hits, n_rel, ranked = self._rank(scores.detach(), batch, overwrite)
        accuracy = self._accuracy(hits, n_rel, c)
        pop_k, tail_k, n_slots = self._beyond(top, c)
        for name, values in zip(ACCURACY_METRICS, accuracy, strict=True):
            state = getattr(self, f"{name}_sum")
            state += values.sum(0)
        self.popularity_sum += pop_k.sum(0)
        self.long_tail_slots += tail_k.sum(0)
        self.slots += n_slots.sum(0)
        self._count_recommended(top, c["prefix"])
        if self.keep_per_user:
            slots_f = n_slots.to(torch.float64)
            # Per-user means over the user's own recommended slots (NaN for an empty list); (B', n_metrics * n_k),
            # metric-major: [recall@k1, recall@k2, ndcg@k1, ...].
            per_user = [*accuracy, pop_k / slots_f, tail_k.to(torch.float64) / slots_f]
            self.pu_values.append(torch.cat(per_user, dim=1))
            self.pu_user.append(batch["users"][ranked].to(torch.int64))
            self.pu_n_relevant.append(n_rel.to(torch.int64))

    def _rank(self, scores: torch.Tensor, batch: Mapping[str, torch.Tensor],
              overwrite: bool) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """The top ``k_max`` items (-1 where no rankable item is left), their hits and |Rel(u)| of the ranked users
        (those with a relevant held-out item; the others are counted as skipped), and which rows those are."""
        n_rows = scores.shape[0]
        rel_rows, rel_items = batch["held_row"], batch["held_item"]
        if self.relevance_threshold is not None:
            keep = batch["held_rating"] >= self.relevance_threshold
            rel_rows, rel_items = rel_rows[keep], rel_items[keep]
        # The relevant (row, item) pairs as sorted unique keys row * n_items + item: |Rel| per row is a bincount
        # and a hit a binary search, with no (B, n_items) mask to fill.
        pairs = torch.unique(rel_rows * self.n_items + rel_items)
        n_rel = torch.bincount(pairs // self.n_items, minlength=n_rows)
        ranked = n_rel > 0
        n_ranked = ranked.sum()
        self.users_ranked += n_ranked
        self.users_skipped += n_rows - n_ranked
        # Rank every row, then keep the ranked users' (B', k) results: cheaper than copying the (B, n_items)
        # scores of the ranked rows first (skipped users are a small minority).
        tie_rank = self._const(scores.device).get("tie_rank")
        top = topk_items(scores, exclusion_pairs(batch), self.k_max, tie_rank, overwrite)[ranked]  # (B', k_max)
        rows = torch.arange(n_rows, device=scores.device)[ranked]
        hits = in_sorted(rows[:, None] * self.n_items + top, pairs) & (top >= 0)  # (B', k_max); NO_ITEM never hits
        return top, hits, n_rel[ranked], ranked

    @staticmethod
    def _per_k(x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """(B', k_max) per-position values -> (B', n_k) sums over the first K positions of each K."""
        return (x[:, None, :] * prefix[None, :, :]).sum(-1)

    def _accuracy(self, hits: torch.Tensor, n_rel: torch.Tensor,
                  c: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """(B', n_k) recall, ndcg, hit_rate, mrr, precision (the order of ACCURACY_METRICS), per the module doc."""
        ks = c["ks"].to(torch.float64)
        n_hits = self._per_k(hits.to(torch.int64), c["prefix"]).to(torch.float64)  # (B', n_k)
        recall = n_hits / n_rel.to(torch.float64)[:, None]
        precision = n_hits / ks
        hit_rate = (n_hits > 0).to(torch.float64)
        dcg = self._per_k(hits.to(torch.float64) * c["discount"], c["prefix"])
        idcg = c["idcg"][torch.minimum(c["ks"][None, :], n_rel[:, None])]  # ideal DCG over min(K, |Rel|)
        ndcg = dcg / idcg
        # Rank (1-based) of the first hit: argmax returns the first maximal position; k_max + 1 when none.
        first = torch.where(hits.any(1), hits.to(torch.int64).argmax(1) + 1, self.k_max + 1)
        mrr = torch.where(first[:, None] <= c["ks"][None, :], 1.0 / first[:, None].to(torch.float64), 0.0)
        return recall, ndcg, hit_rate, mrr, precision

    def _beyond(self, top: torch.Tensor, c: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(B', n_k) summed training popularity and long-tail slots of each user's top K, and its slots (== K
        unless the list is short)."""
        valid = top >= 0
        safe_top = top.clamp(min=0)
        pop = c["popularity"][safe_top] * valid  # (B', k_max) training count of each recommended item
        tail = c["long_tail"][safe_top] & valid
        prefix = c["prefix"]
        slots = self._per_k(valid.to(torch.int64), prefix)
        return self._per_k(pop, prefix), self._per_k(tail.to(torch.int64), prefix), slots

    def _count_recommended(self, top: torch.Tensor, prefix: torch.Tensor) -> None:
        """Coverage: add 1 to rec_count[j, item] for every valid slot inside the top ks[j]; flattening (j, item)
        to j * n_items + item makes it one index_add_ (deterministic on CUDA)."""
        valid = top >= 0
        in_k = prefix[:, None, :] & valid[None, :, :]  # (n_k, B', k_max)
        k_offset = torch.arange(len(self.ks), device=top.device)[:, None, None] * self.n_items
        flat = (k_offset + top.clamp(min=0)[None])[in_k]
        self.rec_count.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def compute(self) -> dict[str, torch.Tensor]:
        """Flat dict of scalar float64 tensors: ``{metric}@{K}`` for every metric and K, plus user counts."""
        ranked = self.users_ranked.to(torch.float64)
        slots = self.slots.to(torch.float64)
        out: dict[str, torch.Tensor] = {}
        for name in ACCURACY_METRICS:
            values = getattr(self, f"{name}_sum") / ranked
            out.update({f"{name}@{k}": values[j] for j, k in enumerate(self.ks)})
        coverage = (self.rec_count > 0).sum(1).to(torch.float64) / self.n_items
        popularity = self.popularity_sum / slots
        long_tail = self.long_tail_slots.to(torch.float64) / slots
        for name, values in zip(BEYOND_METRICS, (coverage, popularity, long_tail), strict=True):
            out.update({f"{name}@{k}": values[j] for j, k in enumerate(self.ks)})
        out["users_ranked"] = ranked
        out["users_skipped"] = self.users_skipped.to(torch.float64)
        return out

    def per_user(self) -> dict[str, torch.Tensor]:
        """Per ranked user: ``user``, ``n_relevant`` (int64) and every ``{metric}@{K}`` of PER_USER_METRICS.

        Needs ``keep_per_user=True``. Under DDP the per-rank lists are gathered first (every rank must call
        it). Rows are in update order (per rank); sort by ``user`` for a stable file.
        """
        if not self.keep_per_user:
            raise RuntimeError("RankingMetrics(keep_per_user=True) is needed for per_user()")
        width = len(PER_USER_METRICS) * len(self.ks)
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            if len(self.pu_user) == 0:  # a list before sync, a concatenated tensor after
                users = torch.zeros(0, dtype=torch.int64, device=self.device)
                n_rel = torch.zeros(0, dtype=torch.int64, device=self.device)
                values = torch.zeros(0, width, dtype=torch.float64, device=self.device)
            else:
                users = dim_zero_cat(self.pu_user)
                n_rel = dim_zero_cat(self.pu_n_relevant)
                values = dim_zero_cat(self.pu_values).reshape(-1, width)
        out = {"user": users, "n_relevant": n_rel}
        col = 0
        for name in PER_USER_METRICS:
            for k in self.ks:
                out[f"{name}@{k}"] = values[:, col]
                col += 1
        return out


class RatingMetrics(MetricCollection):
    """RMSE and MAE of rating predictions on held-out (user, item) pairs, by torchmetrics.

    ``update(pred, target)`` with 1-D predictions and true ratings; ``compute()`` returns
    ``{"rmse": t, "mae": t}``: RMSE = sqrt(mean((pred - target)^2)), MAE = mean(|pred - target|), both over
    every held-out rating (micro average, not per user). States are sums and counts, synced under DDP.
    """

    def __init__(self) -> None:
        super().__init__(
            {"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()},
            compute_groups=False,
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(pred.detach().reshape(-1).float(), target.reshape(-1).float())

    @property
    def update_count(self) -> int:
        """Number of ``update`` calls since the last reset (0: nothing to compute), like ``Metric``'s."""
        return self["rmse"].update_count
