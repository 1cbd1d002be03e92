"""Every metric recarena logs, in one table: its name, which way is better, whether it has a per-user value (the
paired significance tests need one) and what computing it needs. The evaluator (:mod:`recarena.evaluation.metrics`)
logs these names, the leaderboard orders and bolds by them, significance and early stopping follow their direction
(``eval.monitor_mode`` is derived from ``eval.monitor`` here), and so does Optuna's. Imports nothing heavy: the
leaderboard reads it without torch.

Logged names are ``<split>/<name>`` for rating errors and ``<split>/<name>@<K>`` for ranking metrics, e.g.
``val/rmse`` and ``test/ndcg@10``; :func:`metric_of` reads either. Definitions: :mod:`recarena.evaluation.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Needs = Literal["ranking", "catalogue", "ratings", "count"]


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    #: A value per evaluated user, averaged over users (paired per-user tests apply); else one value per run.
    per_user: bool
    #: ``ranking``: each user's top K of the full catalogue; ``catalogue``: every user's top K together;
    #: ``ratings``: predicted ratings of the held-out pairs (families that predict ratings); ``count``: bookkeeping.
    needs: Needs
    description: str

    @property
    def at_k(self) -> bool:
        return self.needs in ("ranking", "catalogue")


#: In leaderboard order: rating errors, accuracy at K, beyond-accuracy at K, then the user counts.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("rmse", False, False, "ratings", "root mean squared error of the held-out ratings"),
    Metric("mae", False, False, "ratings", "mean absolute error of the held-out ratings"),
    Metric("ndcg", True, True, "ranking", "discounted hits over the ideal ordering of the relevant items"),
    Metric("recall", True, True, "ranking", "share of the user's relevant items in the top K"),
    Metric("precision", True, True, "ranking", "share of the top K that is relevant"),
    Metric("hit_rate", True, True, "ranking", "1 when the top K holds a relevant item"),
    Metric("mrr", True, True, "ranking", "1 / rank of the first relevant item in the top K"),
    Metric("coverage", True, False, "catalogue", "share of the catalogue in anyone's top K"),
    Metric("popularity", False, True, "ranking", "mean training popularity of the recommended items"),
    Metric("long_tail", True, True, "ranking", "share of recommended slots that hold a long-tail item"),
    Metric("users_ranked", True, False, "count", "users with a relevant held-out item, scored"),
    Metric("users_skipped", False, False, "count", "users without a relevant held-out item, not scored"),
)}  # fmt: skip

#: Accuracy and beyond-accuracy metrics at K, in the order :meth:`RankingMetrics.compute` returns them.
ACCURACY_METRICS = ("recall", "ndcg", "hit_rate", "mrr", "precision")
BEYOND_METRICS = ("coverage", "popularity", "long_tail")
#: The per-user columns kept with ``keep_per_user=True`` (per K).
PER_USER_METRICS = tuple(name for name in (*ACCURACY_METRICS, *BEYOND_METRICS) if METRICS[name].per_user)
RATING_METRICS = tuple(m.name for m in METRICS.values() if m.needs == "ratings")
#: Counts, not scores: kept in the CSV, left out of the leaderboard's tables.
COUNTS = tuple(m.name for m in METRICS.values() if m.needs == "count")


def metric_of(logged: str) -> Metric | None:
    """The metric of a logged name (``test/ndcg@10`` -> ndcg), None for anything else (a loss, a time)."""
    return METRICS.get(logged.rpartition("/")[2].partition("@")[0])


def lower_is_better(logged: str) -> bool:
    """Direction of a logged metric; outside the registry, losses and times go down and the rest up."""
    if (metric := metric_of(logged)) is not None:
        return not metric.higher_is_better
    base = logged.rpartition("/")[2].lower()
    return "loss" in base or base.endswith("seconds")


def monitor_mode(logged: str) -> str:
    """``min`` or ``max``: what early stopping, the best checkpoint and Optuna follow for ``eval.monitor``."""
    return "min" if lower_is_better(logged) else "max"
