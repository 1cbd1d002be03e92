"""Evaluation shared by every model family: held-out user chunks, full-catalog ranking, metrics.

``EvalData`` cuts a split's held-out ratings into user chunks (batch dicts) that the datamodule serves to
Lightning's validation/test loops; the model scores each chunk's users against the whole catalog and feeds
``RankingMetrics.update(scores, batch)`` (and ``RatingMetrics.update(pred, target)`` for rating models).
Metric definitions are in :mod:`recarena.evaluation.metrics`.
"""

from recarena.evaluation.heldout import (
    BATCH_KEYS,
    MAX_SCORE_CELLS,
    EvalChunks,
    EvalData,
    effective_chunk_size,
)
from recarena.evaluation.metrics import (
    ACCURACY_METRICS,
    BEYOND_METRICS,
    PER_USER_METRICS,
    RankingMetrics,
    RatingMetrics,
    head_mask,
)
from recarena.evaluation.ranking import NO_ITEM, dense_masks, hit_matrix, topk_items

__all__ = [
    "ACCURACY_METRICS",
    "BATCH_KEYS",
    "BEYOND_METRICS",
    "MAX_SCORE_CELLS",
    "NO_ITEM",
    "PER_USER_METRICS",
    "EvalChunks",
    "EvalData",
    "RankingMetrics",
    "RatingMetrics",
    "dense_masks",
    "effective_chunk_size",
    "head_mask",
    "hit_matrix",
    "topk_items",
]
