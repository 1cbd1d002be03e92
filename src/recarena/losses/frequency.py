"""Estimators of how likely an item is to be a column of a training batch, for sampling-bias corrections.

The in-batch softmax (:mod:`recarena.losses.sampled_softmax`) uses the *distinct* items of a batch as its
columns. An item is a column when at least one of the batch's ``B`` positives is that item, so with ``p(x)``
the share of x among the training positives and the batch drawn as ``B`` independent draws from them,

    Q(x) = P(x is a column) = 1 - (1 - p(x))^B.

Every estimator here answers ``log_miss(items, draws) = log(1 - Q(x))``, the log-probability that x is *not* a
column of a batch of ``draws`` rows. Working with the miss probability keeps the arithmetic stable (it is a
sum of logs for independent draws, computed with ``log1p``) and lets mixed negative sampling combine the batch
with a uniform pool by adding two miss log-probabilities (see ``MixedNegativeSamplingLoss``).
The correction a loss needs is then ``log Q = log(1 - exp(log_miss)) = log(-expm1(log_miss))``.

Two estimators:

* :class:`FrequencyQ` (``loss.q_estimator=frequency``): ``p(x)`` counted once from the training view in
  ``setup``. Exact for the data we train on, free at training time.
* :class:`StreamingQ` (``loss.q_estimator=streaming``): the streaming frequency estimator of Yi et al. (2019,
  "Sampling-bias-corrected neural modeling for large corpus item recommendations", Algorithm 2), which needs no
  pass over the data and follows a drifting stream. It learns the average number of steps ``δ(x)`` between two
  batches that contain x; ``1/δ(x)`` estimates the probability that a batch contains x, i.e. ``Q(x)`` itself
  (the per-step hit rate, not the per-draw share ``p(x)``: converting it through ``1-(1-p)^B`` again would
  count the ``B`` draws twice).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recarena.errors import ConfigError

#: Probabilities are kept inside (0, 1) by this margin so that no log is -inf where a gradient-free constant
#: would otherwise turn a logit into -inf or nan.
EPS = 1e-12


def log_inclusion(log_miss: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(log_miss))``: log-probability of being in the pool from the log-probability of missing it.

    ``-expm1`` is exact where the miss probability is close to 1 (rare items: Q tiny), where ``1 - exp`` would
    round to 0.
    """
    return torch.log((-torch.expm1(log_miss)).clamp_min(EPS))


def uniform_log_miss(n_items: int, draws: int) -> float:
    """``log(1 - 1/n)^draws``: log-probability that one given item is not among ``draws`` uniform draws."""
    return float(draws) * float(torch.log1p(torch.tensor(-1.0 / n_items, dtype=torch.float64)))


class ItemFrequencyEstimator(nn.Module):
    """Interface: ``setup(datamodule)`` once, ``observe(items)`` every training step, ``log_miss`` to read.

    State lives in non-persistent buffers: it moves with the model between devices, but stays out of
    checkpoints (it is a function of the training data, rebuilt by ``setup``; the streaming estimate re-warms in
    a few steps after a resume). Evaluation never reads it: ranking uses the uncorrected scores.
    """

    def setup(self, datamodule: Any) -> None:
        """Read training statistics (the positives view of ``datamodule.train_tensors``)."""

    def observe(self, items: torch.Tensor) -> None:
        """Record one training step whose batch contains the distinct ``items`` (C,)."""

    def log_miss(self, items: torch.Tensor, draws: int) -> torch.Tensor:
        """``log(1 - Q(x))`` for each of ``items`` (C,) -> (C,), for a batch of ``draws`` positives."""
        raise NotImplementedError


class FrequencyQ(ItemFrequencyEstimator):
    """``p(x)`` = count of x among the training positives / their number, from ``setup``.

    ``log(1 - Q(x)) = B · log(1 - p(x))``: the batch's ``B`` rows are treated as independent draws from the
    positives (a shuffled epoch draws without replacement; at B = 1024 out of ~50k positives the difference is
    below 1%).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("log1m_p", torch.zeros(0), persistent=False)  # (n_items,) log(1 - p(x))

    def setup(self, datamodule: Any) -> None:
        items = datamodule.train_tensors["items"]  # (N,) items of the training positives
        counts = torch.bincount(items, minlength=int(datamodule.schema.n_items)).double()  # (n_items,)
        p = counts / counts.sum().clamp_min(1.0)
        self.log1m_p = torch.log1p(-p.clamp(max=1.0 - EPS)).float().to(self.log1m_p.device)

    def log_miss(self, items: torch.Tensor, draws: int) -> torch.Tensor:
        if not len(self.log1m_p):
            raise RuntimeError("FrequencyQ.setup(datamodule) must run before the loss is used")
        return float(draws) * self.log1m_p[items]


class StreamingQ(ItemFrequencyEstimator):
    """Yi et al.'s streaming frequency estimator, vectorised over the distinct items of a step.

    Two arrays indexed by a hash ``h(x)`` of the item: ``last[h]`` = the step at which h was last hit and
    ``gap[h]`` = the running estimate δ of the number of steps between two hits. At step t, for each hit bucket:

        gap[h]  <- (1 - α) · gap[h] + α · (t - last[h])
        last[h] <- t

    an exponential moving average of the observed gaps (Yi et al. show the estimate is unbiased for a stationary
    stream and its variance shrinks with α). ``Q(x) ≈ 1 / gap[h(x)]``. A bucket's first hit at step t has seen
    t + 1 steps, a one-sample (geometric) estimate of δ, which initialises ``gap`` instead of an arbitrary value.
    Buckets never hit read as Q = 0 (a correction of log(EPS)); the columns of the in-batch losses are always
    hit first because ``observe`` runs on the batch before the correction is read.

    Args:
        alpha: EMA rate α (Yi et al.: 0.01 to 0.1; smaller = smoother, slower to follow drift).
        buckets: hash-table size H; None = one bucket per catalogue item (no collisions: item ids are dense).
            Collisions merge the hit rates of two items, over-estimating both (Yi et al. use several hash
            functions and keep the largest gap; one table suffices for MovieLens-sized catalogues).
    """

    #: Multiplier of the multiplicative hash (Knuth's golden-ratio constant); item ids < 2^31 stay in int64.
    HASH = 2654435761

    def __init__(self, alpha: float = 0.01, buckets: int | None = None) -> None:
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"loss.q_alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.buckets = buckets
        self.register_buffer("last", torch.zeros(0, dtype=torch.long), persistent=False)  # (H,) -1 = never
        self.register_buffer("gap", torch.zeros(0), persistent=False)  # (H,) steps between hits
        self.register_buffer("step", torch.zeros((), dtype=torch.long), persistent=False)  # t

    def reset(self, size: int) -> None:
        device = self.gap.device
        self.last = torch.full((size,), -1, dtype=torch.long, device=device)
        self.gap = torch.zeros(size, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)

    def setup(self, datamodule: Any) -> None:
        size = int(self.buckets or datamodule.schema.n_items)
        if len(self.gap) != size:  # a later stage (validate, test) keeps the state the training built
            self.reset(size)

    def bucket(self, items: torch.Tensor) -> torch.Tensor:
        if self.buckets is None:
            return items
        return (items * self.HASH) % self.buckets

    @torch.no_grad()
    def observe(self, items: torch.Tensor) -> None:
        if not len(self.gap):
            raise RuntimeError("StreamingQ.setup(datamodule) (or reset(size)) must run before the loss is used")
        # Distinct buckets: two items sharing a bucket would otherwise write the same update twice.
        hit = torch.unique(self.bucket(items))  # (H',)
        t = self.step
        elapsed = (t - self.last[hit]).float()  # steps since the last hit
        seen = self.last[hit] >= 0
        # First hit: t - (-1) = t + 1 steps so far, the one-sample estimate of δ.
        self.gap[hit] = torch.where(seen, (1.0 - self.alpha) * self.gap[hit] + self.alpha * elapsed, elapsed)
        self.last[hit] = t
        self.step += 1

    def inclusion(self, items: torch.Tensor) -> torch.Tensor:
        """``Q(x) ≈ 1/δ(x)``, (C,) -> (C,); 0 for buckets never hit."""
        gap = self.gap[self.bucket(items)]
        return torch.where(gap > 0, 1.0 / gap.clamp_min(1.0), torch.zeros_like(gap))

    def log_miss(self, items: torch.Tensor, draws: int) -> torch.Tensor:
        # δ is measured in steps of the batch size the stream is made of: ``draws`` is not needed again.
        return torch.log1p(-self.inclusion(items).clamp(max=1.0 - EPS))


def make_estimator(name: str, alpha: float = 0.01, buckets: int | None = None) -> ItemFrequencyEstimator:
    """The ``loss.q_estimator`` option -> an estimator."""
    if name == "frequency":
        return FrequencyQ()
    if name == "streaming":
        return StreamingQ(alpha=alpha, buckets=buckets)
    raise ConfigError(f"loss.q_estimator={name!r} is not known; use frequency or streaming")
