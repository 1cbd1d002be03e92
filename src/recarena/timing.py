"""Training-time bookkeeping: pure training seconds per epoch (validation excluded), and the progress bar."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class EpochTimer(L.Callback):
    """Times the training part of each epoch. (The best epoch is the best checkpoint's: ``recarena.run``.)

    Lightning runs validation inside the training epoch, so the epoch's wall time minus the validation time is
    the time spent on training steps; samples/s is computed from that.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.epochs_timed = 0
        self.epoch_seconds: list[float] = []
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

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._epoch_start - self._val_seconds
        self.epoch_seconds.append(seconds)
        self.train_seconds += seconds
        self.epochs_timed += 1

    def samples_per_second(self, n_train: int) -> float:
        return n_train * self.epochs_timed / self.train_seconds if self.train_seconds > 0 else 0.0


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting epochs from 1 as metrics.json and the printed summary do
    ("epoch 3 of 4", not Lightning's 0-based "Epoch 2/3")."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            text += f" of {self.trainer.max_epochs}"
        return f"{text:{len(self.validation_description)}}"
