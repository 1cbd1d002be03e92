"""recarena: train and compare recommender model families on MovieLens, fairly, on one data pipeline.

From Python (a notebook, a script), without Hydra's decorator::

    import recarena

    metrics = recarena.train("model=mf", "loss=bpr", "data=ml-100k", optimizer={"lr": 1e-3})
    cfg = recarena.compose("model=mf", "loss=bpr")          # the config `python train.py model=mf loss=bpr` runs
    metrics = recarena.fit(cfg)                             # train and test it; returns metrics.json's content
    run = recarena.load_run(metrics["best_checkpoint"].split("/checkpoints")[0])   # or any run dir

``compose`` is :func:`recarena.build.compose`, ``fit`` is :func:`recarena.run.train` and ``load_run``
:func:`recarena.inference.load_run`; each is imported on first use, so ``import recarena`` (and the ``recarena``
command's start-up) stays free of torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recarena.resolvers import register_resolvers
from recarena.version import __version__

__all__ = ["__version__", "compose", "fit", "load_run", "train"]

register_resolvers()  # ${recarena.*:...} of conf/: composing a config needs them, from train.py or compose()

def train(*overrides: str, output_dir: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """``fit(compose(*overrides, output_dir=output_dir, **options))``: train and test one configuration given as
    ``train.py``'s overrides (``"model=mf"``) or keywords (``model="mf"``, ``optimizer={"lr": 1e-3}``); returns
    the content of its ``metrics.json``. A user error raises (:data:`recarena.errors.USER_ERRORS`)."""
    compose, fit = __getattr__("compose"), __getattr__("fit")
    return fit(compose(*overrides, output_dir=output_dir, **options))


def __getattr__(name: str) -> Any:
    if name == "compose":
        from recarena.build import compose

        return compose
    if name == "fit":
        from recarena.run import train as fit

        return fit
    if name == "load_run":
        from recarena.inference import load_run

        return load_run
    raise AttributeError(f"module 'recarena' has no attribute {name!r}")
