"""Popularity baseline: every user gets the most-rated training items they have not seen.

Any personalised family must beat it on the ranking metrics to be worth its training time.

Run: ``python train.py model=popularity`` (``loss=none``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recarena.losses.base import Loss
from recarena.models.base import RecommenderModule
from recarena.schema import Schema


class Popularity(RecommenderModule):
    """Scores item i by its number of training ratings (computed on the training part of the split only)."""

    provides = frozenset({"no_training"})
    needs_user_ids = False  # the same list for everyone: held-out users are fine
    test_inputs = "read"  # counts every rating the test may know

    def read_inputs(self, corpus: Any, split: Any, rows: Any) -> None:
        counts = np.bincount(corpus.items[rows], minlength=self.schema.n_items)
        self.popularity.copy_(torch.as_tensor(counts, dtype=torch.float32))

    def __init__(self, schema: Schema | dict[str, Any], loss: Loss, **kwargs: Any) -> None:
        super().__init__(schema, loss, **kwargs)
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler"])
        self.register_buffer("popularity", torch.zeros(self.schema.n_items))

    def on_popularity(self, popularity: torch.Tensor) -> None:
        self.popularity.copy_(popularity)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.popularity[items]

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.popularity.expand(len(users), -1)
        return rows.clone() if out is None else out.copy_(rows)  # a copy: the evaluator writes into it
