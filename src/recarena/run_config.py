"""What every logger records as the run's hyperparameters: the whole resolved config, flattened to dotted keys
(``model.n_factors``, ``optimizer.lr``, ``split.name``, ``data.curation.min_user_ratings``, ``seed``), the chosen
option of each config group (``choice.model: mf``), the parameter counts, the split fingerprint and the run dir.

Lightning logs only the model's ``save_hyperparameters``; with these keys W&B (or TensorBoard's HParams tab) can
filter, group and plot runs by any setting, an Optuna sweep included.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{dotted.key: value}``; lists stay values (``eval.ks: [5, 10, 20]``)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return pd.json_normalize(container, sep=".").to_dict(orient="records")[0]


def run_hyperparameters(
    cfg: DictConfig,
    choices: Mapping[str, str | None],
    model: torch.nn.Module,
    split_fingerprint: str,
    run_dir: Path,
    threads: int,
) -> dict[str, Any]:
    """Everything a dashboard compares runs by. ``choices`` are Hydra's ``runtime.choices`` (its own groups,
    ``hydra/...``, left out); ``threads`` is the number ``threads: auto`` resolved to."""
    parameters = list(model.parameters())
    return {
        **flat_config(cfg),
        **{f"choice.{group}": option for group, option in choices.items() if not group.startswith("hydra")},
        "params.total": sum(p.numel() for p in parameters),
        "params.trainable": sum(p.numel() for p in parameters if p.requires_grad),
        "split.fingerprint": split_fingerprint,
        "run_dir": str(run_dir),
        "threads": threads,
    }
