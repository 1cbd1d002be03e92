"""Softmax over the items of a batch: in-batch negatives, the LogQ correction, mixed negative sampling.

Each training row is a (user, positive item) pair of the ``positives`` view. A full softmax would score the row's
user against the whole catalogue; these losses approximate it by a softmax over a small set of *columns*: the
distinct positives of the batch (``loss=inbatch``, ``loss=logq``), plus uniformly drawn items (``loss=mns``).

Columns are distinct (``torch.unique``), so an item that is the positive of several rows is one column and the
label of each of them, never a negative of a row whose positive it is. (The "Learning RecSys through Papers Vol II"
write-up on in-batch negatives kept duplicate columns, which makes a row's own positive also one of its negatives.)

Notation: B rows, C distinct columns, D the embedding width, s(u, x) = scale · sim(u, x) with sim the cosine
(default) or the dot product of the family's ``user_vectors`` and ``item_vectors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from recarena.errors import ConfigError
from recarena.losses.base import Loss, SeenPositives
from recarena.losses.frequency import log_inclusion, make_estimator, uniform_log_miss
from recarena.processes import gather_rows

if TYPE_CHECKING:
    from recarena.models.base import RecommenderModule


class InBatchSoftmaxLoss(Loss):
    """``loss=inbatch``: cross-entropy of each row's positive against the other distinct positives of the batch.

        L = -1/B Σ_r log softmax_c(s(u_r, x_c))[label_r]   (+ the family's regulariser)

    Popular items are columns of most batches, so they are pushed down as negatives far more often than under a
    full softmax: the uncorrected in-batch loss learns roughly s(u, x) ≈ log P(x | u) - log Q(x) shifted by the
    popularity of x. ``loss=logq`` corrects this.

    Args:
        similarity: ``cosine`` (vectors L2-normalised first; bounded logits, the usual two-tower choice) or
            ``dot`` (the family's raw score, which is what full-catalogue ranking uses at evaluation).
        scale: multiplies the similarity (the inverse softmax temperature). Cosine lies in [-1, 1], so it needs a
            scale of ~10-30 to make the softmax sharp enough; for ``dot`` 1 keeps the family's own scores.
        mask_seen: drop (logit -inf) every column the row's user rated positively in training, other than the
            row's label: another row's positive may be an item this user likes (a false negative).
        across_processes: under DDP, the columns are the distinct positives of every process's batch (their ids
            gathered; each process computes all the columns' item vectors itself, so no gradient crosses
            processes), which makes N processes at ``batch_size`` B train as one process at N·B does. False:
            each process's own positives only, a softmax over 1/N of the negatives.
        monitor, positive_threshold: see :class:`~recarena.losses.base.Loss`.
    """

    needs = frozenset({"embeddings"})
    view = "positives"

    def __init__(
        self,
        similarity: str = "cosine",
        scale: float = 20.0,
        mask_seen: bool = False,
        across_processes: bool = True,
        monitor: str = "val/ndcg@10",
        positive_threshold: float | None = None,
    ) -> None:
        super().__init__(monitor=monitor, positive_threshold=positive_threshold)
        if similarity not in {"cosine", "dot"}:
            raise ConfigError(f"loss.similarity={similarity!r} is not known; use cosine or dot")
        if scale <= 0:
            raise ConfigError(f"loss.scale must be positive, got {scale}")
        self.similarity = similarity
        self.scale = float(scale)
        self.mask_seen = bool(mask_seen)
        self.across_processes = bool(across_processes)
        self.n_items = 0
        self.seen = SeenPositives()  # filled only with mask_seen

    def setup(self, datamodule: Any) -> None:
        self.n_items = int(datamodule.schema.n_items)
        if self.mask_seen:
            self.seen.build(datamodule)

    # ------------------------------------------------------------------ pieces, overridden by the subclasses
    def columns(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct column items ``(C,)`` and each row's label (its positive's column) ``(B,)``."""
        return torch.unique(batch["items"], return_inverse=True)

    def correction(self, columns: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-column term subtracted from every row's logit, ``(C,)``; None = no correction."""
        return None

    # ------------------------------------------------------------------ the loss
    def logits(
        self, model: RecommenderModule, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits (B, C), labels (B,), columns (C,))`` of the batch, corrections and masks applied."""
        self.n_items = self.n_items or int(model.schema.n_items)
        pool, first = self.pooled(batch)
        columns, labels = self.columns(pool)
        labels = labels[first : first + len(batch["items"])]  # this process's rows
        users = model.user_vectors(batch)  # (B, D)
        items = model.item_vectors(columns)  # (C, D)
        logits = self.scale * self.compare(users, items)  # (B, C)
        correction = self.correction(columns, pool)
        if correction is not None:
            logits = logits - correction  # broadcast over rows: every column, the label's included
        if self.mask_seen:
            logits = logits.masked_fill(self.seen_mask(batch["users"], columns, labels), float("-inf"))
        return logits, labels, columns

    def pooled(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """The positives the columns and the correction are built from, and where this process's rows start among
        them: the batch's own; under DDP with ``across_processes``, every process's in rank order (so the LogQ
        correction's B is the global batch too)."""
        items, first = gather_rows(batch["items"]) if self.across_processes else (batch["items"], 0)
        return {"items": items}, first

    def seen_mask(self, users: torch.Tensor, columns: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` True where column c is a training positive of row r's user and not row r's label."""
        seen = self.seen.contains(users[:, None], columns[None, :])  # (B, C)
        label = torch.arange(len(columns), device=columns.device)[None, :] == labels[:, None]  # (B, C)
        return seen & ~label

    def forward(self, model: RecommenderModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, labels, _ = self.logits(model, batch)
        return F.cross_entropy(logits, labels) + model.penalty(batch)


class LogQCorrectedSoftmaxLoss(InBatchSoftmaxLoss):
    """``loss=logq``: the in-batch softmax with ``log Q(x)`` subtracted from every column's logit (Yi et al. 2019).

    Why. The full softmax P(x | u) = exp s(u, x) / Σ_y exp s(u, y) sums over the catalogue. Sampled softmax
    replaces the sum by one over a set S of items drawn from a proposal Q, and is consistent (its gradient
    estimate is unbiased as |S| grows) when each sampled logit is importance-weighted by 1/Q:

        Σ_y exp s(u, y) = E_{y~Q}[exp s(u, y) / Q(y)]  ≈  Σ_{y∈S} exp(s(u, y) - log Q(y)).

    The in-batch columns are such a sample, with Q(x) = P(x is a column of the batch). The corrected logit
    s(u, x) - log Q(x) then enters both the numerator (the positive) and the denominator (every column), so the
    correction is applied to *every* column, the label's included; dropping it for the positive (as the code of
    the "Learning RecSys through Papers Vol II" write-up does) keeps the popularity bias on the side that matters
    most. For distinct columns and a batch of B positives drawn from the training share p(x):

        Q(x) = 1 - (1 - p(x))^B     (≈ B p(x) for rare items; -> 1 for items in nearly every batch),

    with B the rows of this batch (``batch_size``, or fewer for an epoch's last batch; under DDP with
    ``across_processes``, the rows of every process's batch, whose positives are the columns).

    Q comes from ``q_estimator``: ``frequency`` (counted over the training positives in ``setup``) or
    ``streaming`` (Yi et al.'s estimator, learnt from the batches as they come; see
    :mod:`recarena.losses.frequency`). The correction is a constant (no gradient). Evaluation ranks by the
    family's uncorrected scores (``score_all``): the correction only undoes the sampling of the negatives.

    Args:
        q_estimator: ``frequency`` or ``streaming``.
        q_alpha: the streaming estimator's moving-average rate α.
        q_buckets: the streaming estimator's hash-table size (None = one bucket per item).
        **kwargs: see :class:`InBatchSoftmaxLoss`.
    """

    def __init__(
        self, q_estimator: str = "frequency", q_alpha: float = 0.01, q_buckets: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.q_estimator = q_estimator
        self.estimator = make_estimator(q_estimator, alpha=q_alpha, buckets=q_buckets)

    def setup(self, datamodule: Any) -> None:
        super().setup(datamodule)
        self.estimator.setup(datamodule)

    def batch_log_miss(self, columns: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log(1 - Q_batch(x))`` for the columns ``(C,)``; the streaming estimator first records the batch."""
        if self.training:
            self.estimator.observe(torch.unique(batch["items"]))
        return self.estimator.log_miss(columns, len(batch["items"]))

    def correction(self, columns: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return log_inclusion(self.batch_log_miss(columns, batch))  # (C,) log Q(x)


class MixedNegativeSamplingLoss(LogQCorrectedSoftmaxLoss):
    """``loss=mns``: mixed negative sampling (Yang et al. 2020): in-batch columns plus B' uniform items.

    In-batch negatives are all items somebody just interacted with, so rare items are almost never negatives and
    the model is never told they rank below anything (the "selection bias" of in-batch sampling). MNS adds B'
    items drawn uniformly from the catalogue (``n_sampled``). The pool is the union, deduplicated: a sampled item
    that is also a batch positive is that one column (the label of the rows whose positive it is).

    The LogQ correction now uses the probability of being in the mixed pool. The batch part and the uniform part
    are drawn independently, so x misses the pool only if it misses both:

        P(x ∈ pool) = 1 - (1 - q_batch(x)) (1 - q_uniform(x)),
        q_batch(x)   = 1 - (1 - p(x))^B          (the in-batch Q of ``loss=logq``),
        q_uniform(x) = 1 - (1 - 1/n_items)^B'.

    In logs: log P = log(1 - exp(log(1 - q_batch) + B' log(1 - 1/n_items))), computed with ``expm1``/``log1p``.
    Popular items get P ≈ 1 (correction ≈ 0: they are in the pool anyway), catalogue-tail items P ≈ B'/n_items.

    Args:
        n_sampled: B', uniform items per batch; None = as many as the batch's rows.
        **kwargs: see :class:`LogQCorrectedSoftmaxLoss`.
    """

    def __init__(self, n_sampled: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_sampled is not None and n_sampled < 0:
            raise ConfigError(f"loss.n_sampled must be >= 0 (or null = the batch size), got {n_sampled}")
        self.n_sampled = n_sampled

    def draws(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["items"]) if self.n_sampled is None else int(self.n_sampled)

    def columns(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        positives = batch["items"]  # (B,)
        sampled = torch.randint(self.n_items, (self.draws(batch),), device=positives.device)  # (B',)
        columns, inverse = torch.unique(torch.cat([positives, sampled]), return_inverse=True)  # (C,), (B + B',)
        return columns, inverse[: len(positives)]

    def correction(self, columns: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        log_miss = self.batch_log_miss(columns, batch) + uniform_log_miss(self.n_items, self.draws(batch))
        return log_inclusion(log_miss)  # (C,) log P(x in pool)
