"""recarena: train and compare recommender model families on MovieLens, fairly, on one data pipeline.

``from recarena import load_run`` loads a trained run (:mod:`recarena.inference`); it is imported on first use,
so ``import recarena`` (and the ``recarena`` command's start-up) stays free of torch.
"""

from typing import Any

from recarena.resolvers import register_resolvers

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]

register_resolvers()  # ${recarena.*:...} of conf/: composing a config needs them, from train.py or the compose API


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from recarena.inference import load_run

        return load_run
    raise AttributeError(f"module 'recarena' has no attribute {name!r}")
