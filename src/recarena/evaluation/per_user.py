"""``per_user_metrics.parquet``: every evaluated user's test metrics, for the leaderboard's paired significance
test (:mod:`recarena.significance`), which needs the same users' values under two models.

A Lightning callback (``conf/callbacks/default.yaml``), so neither ``run.py`` nor the families know about it:

- ranking metrics: it turns on :meth:`RankingMetrics.track_per_user` on the module's ``test_ranking`` when the
  test epoch starts, and reads :meth:`RankingMetrics.per_user` when it ends (callbacks' ``on_test_epoch_end``
  runs before the module's, which resets the metric);
- rating errors, for families that predict ratings: it predicts the batch's held-out pairs again (a few
  thousand pairs per chunk, nothing next to full-catalogue scoring) and sums squared and absolute errors per
  user with ``index_add_``.

Under DDP each process scores its own users (``EvalData.batches``): ``per_user()`` gathers the ranking rows
of every process (torchmetrics' padded ``all_gather``), the rating sums are gathered the same way, and only
global rank 0 writes the file, so it holds every user once.

File: one row per evaluated user, sorted by ``user`` (the corpus user index); ``user_id`` (the id in the
MovieLens files), ``n_relevant`` and every ``{metric}@{K}`` of ``PER_USER_METRICS`` for users with a relevant
held-out item (others are skipped by ranking, as in the averages), and for rating families ``n_rated``,
``rmse`` (root of the user's mean squared error) and ``mae``. Means of the ranking columns are the run's test
metrics; RMSE/MAE in ``metrics.json`` are over ratings, not users, so they are not the means of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from recarena.atomic import atomic_file
from recarena.processes import gather_rows
from recarena.record import PER_USER_FILE

#: Columns of one row of rating sums per (chunk, user): user index, held-out ratings, sum of squared and
#: of absolute errors. float64 throughout, so one tensor holds them (user indices are exact below 2**53).
_RATING_SUMS = ("user", "n_rated", "sq_error", "abs_error")


class PerUserMetricsWriter(L.Callback):
    """Writes ``per_user_metrics.parquet`` into ``dirpath`` (default: the trainer's ``default_root_dir``, which
    ``run.py`` sets to the run dir) after each test epoch."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self._rating_sums: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rating_sums = []
        pl_module.test_ranking.track_per_user()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not pl_module.predicts_ratings or not batch["held_item"].numel():
            return
        rows = batch["held_row"]  # (H,) row of each held-out rating within the chunk
        users = batch["users"]  # (B,)
        pred = pl_module.predict_ratings(users[rows], batch["held_item"]).float()  # as RatingMetrics gets it
        err = (pred - batch["held_rating"].float()).to(torch.float64)
        sums = torch.zeros(users.shape[0], 3, dtype=torch.float64, device=err.device)  # (B, 3)
        sums.index_add_(0, rows, torch.stack([torch.ones_like(err), err.square(), err.abs()], dim=1))
        rated = sums[:, 0] > 0
        self._rating_sums.append(torch.cat([users[rated, None].to(sums), sums[rated]], dim=1))  # (B', 4)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ranking = {k: v.cpu().numpy() for k, v in pl_module.test_ranking.per_user().items()}  # every rank calls
        frame = pd.DataFrame(ranking)
        if pl_module.predicts_ratings:
            local = (torch.cat(self._rating_sums) if self._rating_sums
                     else torch.zeros(0, len(_RATING_SUMS), dtype=torch.float64, device=pl_module.device))
            sums = pd.DataFrame(gather_rows(local)[0].cpu().numpy(), columns=list(_RATING_SUMS))
            sums = sums.astype({"user": np.int64}).groupby("user", as_index=False).sum()
            rating = pd.DataFrame({
                "user": sums["user"],
                "n_rated": sums["n_rated"].astype(np.int64),
                "rmse": np.sqrt(sums["sq_error"] / sums["n_rated"]),
                "mae": sums["abs_error"] / sums["n_rated"],
            })
            frame = frame.merge(rating, on="user", how="outer")
        self._rating_sums = []
        if not trainer.is_global_zero:
            return
        frame = frame.sort_values("user", kind="stable").reset_index(drop=True)
        for col in ("n_relevant", "n_rated"):
            if col in frame:  # NaN for users on one side of the outer join only
                frame[col] = frame[col].astype("Int64")
        corpus = getattr(trainer.datamodule, "corpus", None)
        if corpus is not None:
            frame.insert(1, "user_id", np.asarray(corpus.user_ids)[frame["user"].to_numpy()])
        path = Path(self.dirpath or trainer.default_root_dir) / PER_USER_FILE
        with atomic_file(path, "wb") as handle:
            frame.to_parquet(handle, index=False)
