"""Evaluation shared by every model family: full-catalog ranking (:mod:`~recarena.evaluation.ranking`), the
metrics (:mod:`~recarena.evaluation.metrics`, torchmetrics), the metric registry
(:mod:`~recarena.evaluation.registry`: names, directions, per-user or not) and per-user metric files
(:mod:`~recarena.evaluation.per_user`).

``EvalData`` (:mod:`recarena.data.heldout`) cuts a split's held-out ratings into user chunks (batch dicts) that
the datamodule serves to Lightning's validation/test loops; the model scores each chunk's users against the whole
catalog and feeds ``RankingMetrics.update(scores, batch)`` (and ``RatingMetrics.update(pred, target)`` for rating
models). Nothing is imported here, so that the registry is read without torch (the leaderboard does).
"""
