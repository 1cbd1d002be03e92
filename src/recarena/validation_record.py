"""The validation metrics of every training epoch, kept so that the best checkpoint's need no second pass.

After ``fit``, Lightning's ``callback_metrics`` hold the *last* epoch's validation, while the run reports and
tests the *best* checkpoint. Validating that checkpoint again costs a whole pass over the validation users (about
a minute at ML-25M on a CPU) to recompute numbers the run already had. :class:`ValidationRecord` keeps each epoch's
``val/`` metrics as Lightning finalises them; it is stateful, so the record travels in every checkpoint and a run
resumed with ``ckpt_path=`` still knows the epochs before the resume.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidationRecord(L.Callback):
    """``epochs[e]``: the ``val/`` metrics of 0-based training epoch ``e`` (the epoch a checkpoint records)."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch-end hooks: callback_metrics now hold everything validation logged, the family's own
        # extras (e.g. the siamese triplet AUC) included; ModelCheckpoint saves after this, with this epoch in.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.epochs[int(trainer.current_epoch)] = {
            k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": {str(epoch): metrics for epoch, metrics in self.epochs.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = {int(epoch): dict(metrics) for epoch, metrics in state_dict.get("epochs", {}).items()}
