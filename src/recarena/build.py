"""From a composed config to the objects a run is made of, in plain Python: the datamodule, the family's
LightningModule and the trainer (what ``train()`` fits and ``load_run`` rebuilds), and :func:`compose`, the config
``python train.py <overrides>`` would run, for a notebook or a script (no ``@hydra.main``, nothing global left set).

    cfg = recarena.compose("model=mf", "loss=bpr", "data=ml-100k", optimizer={"lr": 1e-3})
    metrics = recarena.fit(cfg)                 # or recarena.train("model=mf", "loss=bpr", ...) in one call
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from recarena.checkpoint_io import AtomicCheckpointIO
from recarena.data.datamodule import MovieLensDataModule
from recarena.paths import CONF_DIR
from recarena.random_state import RandomState
from recarena.resolvers import register_resolvers
from recarena.timing import EpochTimer
from recarena.validation_record import ValidationRecord

#: Lightning warnings that do not apply to recarena's trainers, silenced when this module is imported (by runs and by
#: the benches, whether they build their trainer here or by hand) so that real ones stand out:
#: - our loaders cut batches from in-memory tensors in the main process on purpose (workers would copy them);
#: - evaluation metrics are reduced across processes by torchmetrics already, not by self.log(sync_dist=True);
#: - the training loss is logged per epoch, so a short epoch below log_every_n_steps loses nothing;
#: - a deprecation inside Lightning's own pytree helper (Lightning 2.6 on torch >= 2.10);
#: - families fitted by exact sweeps (iALS, loss=als) have no optimiser on purpose.
NOT_FOR_US = (
    ".*does not have many workers.*",
    ".*sync_dist=True.*",
    ".*smaller than the logging interval.*",
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*litlogger.*",
    ".*configure_optimizers. returned .None.*",
)
for _message in NOT_FOR_US:  # once, on import: every trainer of a run or a bench is built after it
    warnings.filterwarnings("ignore", message=_message)

#: ``${hydra:runtime.output_dir}`` and friends in conf/: under ``@hydra.main`` Hydra's global job config answers
#: them; :func:`compose` replaces them by the values of the config's own ``hydra`` node instead.
_HYDRA_INTERPOLATION = re.compile(r"\$\{hydra:([^}]+)\}")


def build_datamodule(cfg: DictConfig, view: str, positive_threshold: float | None = None) -> MovieLensDataModule:
    return MovieLensDataModule(
        data=cfg.data,
        split=cfg.split,
        seed=int(cfg.seed),
        batch_size=int(cfg.batch_size),
        view=view,
        user_chunk=int(cfg.eval.user_chunk),
        minibatches_per_step=int(cfg.minibatches_per_step),
        shuffle=bool(cfg.get("shuffle", True)),
        positive_threshold=positive_threshold,
        view_options=OmegaConf.to_container(cfg.model, resolve=True),
        max_eval_users=cfg.eval.get("max_users"),
        test_known=str(cfg.eval.get("test_known", "train")),
        prepare=get_class(cfg.model._target_).prepares,
    )


def build_model(cfg: DictConfig, dm: MovieLensDataModule) -> L.LightningModule:
    loss = instantiate(cfg.loss)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") and cfg.scheduler.get("_target_") else None
    return instantiate(
        cfg.model,
        schema=dm.schema,
        loss=loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        ks=list(cfg.eval.ks),
        relevance_threshold=cfg.eval.relevance_threshold,
        head_share=cfg.eval.head_share,
        tie_seed=cfg.eval.get("tie_seed"),
        compile_step=cfg.get("compile", False),
        _convert_="all",
    )


def build_trainer(cfg: DictConfig, output_dir: Path, timer: EpochTimer) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    # RandomState: a resumed run draws what the straight run would have; ValidationRecord: the best epoch's
    # validation metrics without validating its checkpoint again.
    callbacks += [timer, RandomState(), ValidationRecord()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=output_dir,
                       plugins=[AtomicCheckpointIO()])  # fmt: skip


def compose(*overrides: str, output_dir: str | Path | None = None, **options: Any) -> DictConfig:
    """The config ``python train.py <overrides>`` would run, from plain Python.

    ``overrides`` are Hydra overrides as on the command line (``"model=mf"``, ``"optimizer.lr=0.001"``);
    ``options`` the same as keywords, a dict standing for a config node (``model="mf"``, ``optimizer={"lr": 1e-3}``).
    The run dir is ``output_dir``, else a new one under ``outputs/`` as ``train.py`` would make. The config keeps
    Hydra's job information in its ``hydra`` node (what was chosen and overridden), which :func:`recarena.fit`
    records in ``metrics.json``; no Hydra state is left behind.

    Raises:
        hydra.errors.ConfigCompositionException (or one of its subclasses): an unknown option or key.
    """
    register_resolvers()
    overrides = (*overrides, *_keyword_overrides(options))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(output_dir or cfg.hydra.run.dir).absolute())
        cfg.hydra.job.name = "train"
    _replace_hydra_interpolations(cfg)
    return cfg


def _keyword_overrides(options: dict[str, Any]) -> list[str]:
    """``model="mf"`` -> ``model=mf``; ``optimizer={"lr": 1e-3}`` -> ``optimizer.lr=0.001`` (nested dicts flatten)."""
    out: list[str] = []
    for key, value in options.items():
        if isinstance(value, dict):
            out += _keyword_overrides({f"{key}.{k}": v for k, v in value.items()})
        else:
            out.append(f"{key}={_override_value(value)}")
    return out


def _override_value(value: Any) -> str:
    """A Python value as Hydra's override grammar reads it (True -> true, None -> null, lists as [a,b])."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def _replace_hydra_interpolations(cfg: DictConfig) -> None:
    """Every ``${hydra:key}`` outside the ``hydra`` node becomes the value of ``hydra.key`` in ``cfg`` itself."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    for path, value in _strings(raw, ()):
        if path[0] != "hydra" and _HYDRA_INTERPOLATION.search(value):
            node = cfg
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = _HYDRA_INTERPOLATION.sub(lambda m: str(OmegaConf.select(cfg.hydra, m.group(1))), value)


def _strings(node: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """(path, value) of every string under a plain container."""
    if isinstance(node, dict):
        return [item for key, child in node.items() for item in _strings(child, (*path, key))]
    if isinstance(node, list):
        return [item for i, child in enumerate(node) for item in _strings(child, (*path, i))]
    return [(path, node)] if isinstance(node, str) else []
