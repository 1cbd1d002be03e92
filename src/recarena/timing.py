"""Training-time bookkeeping: pure training seconds per epoch (validation excluded) and the best epoch."""

from __future__ import annotations

import math
import time

import lightning as L


class EpochTimer(L.Callback):
    """Times the training part of each epoch and remembers the epoch with the best monitored metric.

    Lightning runs validation inside the training epoch, so the epoch's wall time minus the validation time is
    the time spent on training steps; samples/s is computed from that.
    """

    def __init__(self, monitor: str = "val/ndcg@10", mode: str = "max") -> None:
        self.monitor = monitor
        self.sign = -1.0 if mode == "min" else 1.0
        self.train_seconds = 0.0
        self.epochs_timed = 0
        self.epoch_seconds: list[float] = []
        self.best_epoch: int | None = None
        self._best = -math.inf
        self._epoch_start = 0.0
        self._val_seconds = 0.0
        self._val_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._val_seconds = 0.0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_seconds += time.perf_counter() - self._val_start
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and self.sign * float(value) > self._best:
            self._best = self.sign * float(value)
            self.best_epoch = int(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._epoch_start - self._val_seconds
        self.epoch_seconds.append(seconds)
        self.train_seconds += seconds
        self.epochs_timed += 1

    def samples_per_second(self, n_train: int) -> float:
        return n_train * self.epochs_timed / self.train_seconds if self.train_seconds > 0 else 0.0
