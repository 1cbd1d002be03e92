"""Exact resume: the random streams a run draws from travel in its checkpoints.

BPR's negatives, the mixed negatives of ``loss=mns``, dropout and the siamese draws come from the global torch,
numpy and Python generators (and CUDA's). Lightning restores weights, optimiser and epoch from a checkpoint but
not these, so a resumed run would draw other negatives than the run that went straight on. :class:`RandomState`
saves them with every checkpoint and puts them back when ``ckpt_path=`` resumes; the epoch's shuffling is seeded
by the epoch itself (:class:`recarena.data.views.ShuffledBatches`).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RandomState(L.Callback):
    """Checkpoints the torch, numpy, Python and CUDA generator states and restores them on resume."""

    def state_dict(self) -> dict[str, Any]:
        # numpy's state as a tensor and plain numbers: checkpoints stay loadable with torch.load(weights_only=True)
        name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global one is the point)
        numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, n["position"], n["has_gauss"], n["cached_gaussian"]))  # noqa: NPY002
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
