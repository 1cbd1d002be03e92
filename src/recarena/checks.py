"""Start-up checks: an invalid combination of options fails here, before any data is read or downloaded.

Each check names the option that is wrong and the choices that would work, reading the choices from the config
groups themselves (``conf/loss/*.yaml``, the release registry), so adding a family or a loss needs no edit here.
"""

from __future__ import annotations

import inspect
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from recarena.errors import ConfigError, one_line
from recarena.paths import CONF_DIR
from recarena.process_layout import is_distributed

_ABSENT = object()


#: eval.test_known: what a model may know at test time.
TEST_KNOWN = ("train", "train+val")

#: compile: off, torch.compile's default mode, or one of its named modes.
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")




def group_targets(group: str) -> dict[str, str]:
    """``{option name: _target_}`` of every YAML in ``conf/<group>/``."""
    targets = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target:
            targets[path.stem] = target
    return targets


def family_presets() -> dict[str, tuple[str, str]]:
    """``{preset: (model option, loss option)}`` of every comparable family, ``conf/family/<preset>.yaml``: the one
    list that ``experiment=compare_families``, ``recarena benchmark``, the tests and the benchmarks read."""
    presets = {}
    for path in sorted((CONF_DIR / "family").glob("*.yaml")):
        chosen: dict[str, str] = {}
        for entry in OmegaConf.load(path).get("defaults") or []:
            if isinstance(entry, DictConfig):
                chosen.update({str(k).split("/")[-1].split("@")[0]: str(v) for k, v in entry.items()})
        presets[path.stem] = (chosen.get("model", "?"), chosen.get("loss", "?"))
    return presets


def compatible_losses(model_target: str) -> list[str]:
    """Names of the ``loss=`` options whose needs the family provides."""
    provides = get_class(model_target).provides
    return [name for name, target in group_targets("loss").items() if get_class(target).needs <= provides]


def check_model_and_loss(cfg: DictConfig) -> None:
    model_cls = get_class(cfg.model._target_)
    loss_cls = get_class(cfg.loss._target_)
    if not loss_cls.needs <= model_cls.provides:
        model_name = option_name(cfg, "model", model_cls.__name__)
        loss_name = option_name(cfg, "loss", loss_cls.__name__)
        raise ConfigError(
            f"model={model_name} cannot be trained with loss={loss_name} (it needs "
            f"{', '.join(sorted(loss_cls.needs - model_cls.provides))}). "
            f"Losses that fit model={model_name}: {', '.join(compatible_losses(cfg.model._target_))}."
        )


def check_implicit(cfg: DictConfig) -> None:
    """Implicit feedback (``data.rating_col=null``) has no ratings to fit: refuse a loss that needs them."""
    if "rating_col" not in cfg.data or cfg.data.get("rating_col"):
        return
    loss_cls = get_class(cfg.loss._target_)
    if "ratings" in loss_cls.needs:
        fits = [name for name in compatible_losses(cfg.model._target_)
                if "ratings" not in get_class(group_targets("loss")[name]).needs]  # fmt: skip
        raise ConfigError(
            f"data.rating_col=null (implicit feedback) has no ratings for loss={option_name(cfg, 'loss')} to fit: "
            f"use a ranking loss ({', '.join(fits) or 'none fits model=' + option_name(cfg, 'model')}), or name "
            "the rating column with data.rating_col."
        )


def check_split(cfg: DictConfig) -> None:
    model_cls = get_class(cfg.model._target_)
    if cfg.split.name == "users" and model_cls.needs_user_ids:
        raise ConfigError(
            f"split=users holds out whole users, but model={option_name(cfg, 'model', model_cls.__name__)} learns one "
            "embedding per training user id and cannot score users it never saw. Use a family that builds users "
            "from features, or another split (temporal, time_cutoff, random, leave_one_out)."
        )


def check_accelerator(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in {"gpu", "cuda"} and not torch.cuda.is_available():
        raise ConfigError(
            "trainer=gpu but no CUDA GPU is visible to torch (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}). Use trainer=cpu, or install a CUDA build of torch on a machine with a GPU."
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer=mps but Apple's MPS backend is not available here. Use trainer=cpu.")
    precision = str(cfg.trainer.get("precision", "32-true"))
    if "16" in precision and accelerator == "cpu" and precision != "bf16-mixed":
        raise ConfigError(f"trainer.precision={precision} needs a GPU; on the CPU use 32-true or bf16-mixed.")
    on_gpu = accelerator in {"gpu", "cuda"} or (accelerator == "auto" and torch.cuda.is_available())
    if precision.startswith("bf16") and on_gpu and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"trainer.precision={precision}: {torch.cuda.get_device_name()} has no bfloat16 arithmetic "
                          "(it needs compute capability 8.0 or newer); use trainer.precision=16-mixed or 32-true.")


def check_compile(cfg: DictConfig) -> None:
    """``compile`` needs torch.compile on this platform (TorchDynamo supports this Python and OS) and, for its
    kernels, Triton on a GPU or a C++ compiler on the CPU; the check imports torch._dynamo (~1 s) only when
    compile is on."""
    if not cfg.get("compile", False):
        return
    option = f"compile={str(cfg.compile).lower() if isinstance(cfg.compile, bool) else cfg.compile}"
    import torch._dynamo  # heavy, and needed only here

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"{option}: torch.compile is not supported here (torch {torch.__version__}, "
                          f"Python {sys.version.split()[0]}, {sys.platform}). Use compile=false.")  # fmt: skip
    if str(cfg.trainer.get("accelerator", "auto")) != "cpu" and torch.cuda.is_available():
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError(f"{option} on a GPU needs Triton for its kernels (import triton failed): install the "
                              "triton that matches this torch (pip install triton) or use compile=false.")  # fmt: skip
    else:
        from torch._inductor import config as inductor

        cxx = inductor.cpp.cxx  # (None, "g++") by default: the last name given is the one inductor runs
        compiler = next((c for c in reversed(cxx) if c), "g++") if isinstance(cxx, tuple) else cxx or "g++"
        if not shutil.which(compiler):
            raise ConfigError(f"{option} on the CPU needs a C++ compiler ({compiler} is not on PATH): "
                              "install one (apt-get install g++) or use compile=false.")  # fmt: skip


def check_data(cfg: DictConfig) -> None:
    from recarena.data.sources import RELEASES  # light import: the registry only

    known = sorted([*RELEASES, "synthetic", "custom"])
    if cfg.data.name not in known:
        raise ConfigError(f"unknown dataset data.name={cfg.data.name!r}; known: {', '.join(known)}.")


def check_eval(cfg: DictConfig) -> None:
    ks = list(cfg.eval.ks)
    if not ks or any(int(k) <= 0 for k in ks):
        raise ConfigError(f"eval.ks must be a non-empty list of positive cut-offs, got {ks}.")
    if str(cfg.eval.get("test_known", "train")) not in TEST_KNOWN:
        raise ConfigError(f"eval.test_known must be one of {', '.join(TEST_KNOWN)}, got {cfg.eval.test_known!r}.")
    max_users = cfg.eval.get("max_users")
    if max_users is not None and (not isinstance(max_users, int) or max_users < 1):
        raise ConfigError(f"eval.max_users must be a positive integer or null (all users), got {max_users!r}.")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: (option, whether a value is valid, what it must be): ranges the config alone decides, checked before any data
#: work. An option the config does not have (another family's optimiser, a split without fractions) is skipped.
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    ("batch_size", _count, "a positive integer"),
    ("minibatches_per_step", _count, "a positive integer"),
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a positive number"),
    ("optimizer.fused", lambda v: v is None or isinstance(v, bool), "true, false or null (torch's choice)"),
    ("trainer.max_epochs", lambda v: isinstance(v, int) and (v >= 1 or v == -1),
     "1 or more (-1: until early stopping stops it)"),
    ("data.curation.fraction", lambda v: v is None or (_number(v) and 0 < v <= 1), "a fraction in (0, 1] or null"),
    ("data.curation.max_users", lambda v: v is None or _count(v), "a positive integer or null (all users)"),
    ("eval.user_chunk", _count, "a positive integer (users scored per evaluation chunk)"),
    ("eval.head_share", lambda v: _number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    ("eval.relevance_threshold", lambda v: v is None or _number(v), "a rating or null"),
    ("data.device_resident", lambda v: v in ("auto", True, False), "auto, true or false"),
    ("compile", lambda v: v in COMPILE_MODES, "false, true, " + ", ".join(str(m) for m in COMPILE_MODES[2:])),
    ("eval.tie_seed", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
     "an integer or null (lower item index first)"),
)  # fmt: skip


def check_ranges(cfg: DictConfig) -> None:
    for key, valid, what in RANGES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not valid(value):
            raise ConfigError(f"{key} must be {what}, got {key}={value!r}.")


def check_split_options(cfg: DictConfig) -> None:
    """The split's name and fractions (recarena.data.splits checks them again when it splits)."""
    from recarena.data.splits import split_parameters

    try:
        split_parameters(cfg.split)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def computed_metrics(cfg: DictConfig) -> list[str]:
    """The validation metrics the run will log: every ranking metric at every ``eval.ks``, and RMSE/MAE when the
    family predicts ratings and its loss trains it to (:attr:`recarena.models.base.RecommenderModule.predicts_ratings`)."""
    from recarena.evaluation.metrics import metric_names

    ratings = "ratings" in get_class(cfg.model._target_).provides and "ratings" in get_class(cfg.loss._target_).needs
    return [f"val/{name}" for name in metric_names([int(k) for k in cfg.eval.ks], ratings)]


def check_monitor(cfg: DictConfig) -> None:
    """Early stopping and the best checkpoint follow ``eval.monitor``: it must be a metric the run computes, on a
    validation set that exists."""
    monitor = str(cfg.eval.monitor)
    known = computed_metrics(cfg)
    if monitor not in known:
        raise ConfigError(
            f"eval.monitor={monitor} is not a metric this run computes (loss={option_name(cfg, 'loss')}, "
            f"eval.ks={list(cfg.eval.ks)}); it computes {', '.join(m for m in known if 'users_' not in m)}."
        )
    followers = [name for name in ("early_stopping", "model_checkpoint")
                 if OmegaConf.select(cfg, f"callbacks.{name}.monitor", default=None)]  # fmt: skip
    if OmegaConf.select(cfg, "split.val_fraction", default=None) == 0 and followers:
        raise ConfigError(
            f"split.val_fraction=0 leaves no validation set for eval.monitor={monitor}, which "
            f"{' and '.join(f'callbacks.{f}' for f in followers)} follow: set those callbacks to null and fix "
            "trainer.max_epochs, or keep a validation share."
        )


def check_threads(cfg: DictConfig) -> None:
    threads = cfg.get("threads", "auto")
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive number of CPU threads per job or auto (this job's share of "
                          f"the cores), got threads={threads!r}.")  # fmt: skip


def check_extras(cfg: DictConfig) -> None:
    """Options that need an optional extra installed fail here, before any data work."""
    if cfg.model.get("encoding") == "text":
        from recarena.data.text_encoding import require_text_extra

        require_text_extra()


def _default(target: str, name: str) -> Any:
    """The constructor default of argument ``name`` of ``target`` (a config's ``_target_``)."""
    parameter = inspect.signature(get_class(target)).parameters.get(name)
    return None if parameter is None else parameter.default


def config_warnings(cfg: DictConfig) -> list[str]:
    """Settings that are valid but silently do less than they say, each as one line naming the key: the run goes
    on, and :func:`recarena.run.train` logs each once."""
    from recarena.data.splits import SPLITTERS

    warnings: list[str] = []
    if cfg.get("test", True) and not OmegaConf.select(cfg, "callbacks.model_checkpoint", default=None):
        warnings.append("callbacks.model_checkpoint is off: the test scores the last epoch's weights, not the best "
                        "validation epoch's.")  # fmt: skip
    scheduler = OmegaConf.select(cfg, "scheduler._target_", default=None)
    if scheduler and OmegaConf.select(cfg, "callbacks.early_stopping", default=None):
        warnings.append(f"scheduler={option_name(cfg, 'scheduler')} is sized to trainer.max_epochs="
                        f"{cfg.trainer.max_epochs}, but callbacks.early_stopping may end the run before the schedule "
                        "does; set callbacks.early_stopping=null for the full schedule.")  # fmt: skip
    loss = cfg.loss
    if loss.get("q_estimator") == "frequency":
        for key in ("q_alpha", "q_buckets"):
            if key in loss and loss[key] != _default(loss._target_, key):
                warnings.append(f"loss.{key}={loss[key]} does nothing with loss.q_estimator=frequency (the "
                                "streaming estimator's option).")  # fmt: skip
    name = str(cfg.split.get("name"))
    if cfg.split.get("seed") is not None and name in SPLITTERS and not SPLITTERS[name][2]:
        warnings.append(f"split.seed={cfg.split.seed} does nothing: split={name} does not depend on a seed.")
    if is_distributed(cfg.trainer.get("strategy"), cfg.trainer.get("devices")) and int(cfg.get("minibatches_per_step", 1)) != 1:
        warnings.append(f"minibatches_per_step={cfg.minibatches_per_step} is forced to 1 under DDP (one backward "
                        "per forward of the DDP wrapper).")  # fmt: skip
    if cfg.optimizer.get("_target_", "").endswith("SparseDenseAdam") and cfg.optimizer.get("weight_decay"):
        warnings.append(f"optimizer.weight_decay={cfg.optimizer.weight_decay} decays the dense parameters only; "
                        "the sparse embedding tables are regularised by model.l2.")  # fmt: skip
    return warnings


def check_resume(cfg: DictConfig) -> None:
    """``ckpt_path=`` names a Lightning checkpoint that exists and reads (loaded memory-mapped: the weights are
    not read here); whether it fits this model is known once the model is built (recarena.run)."""
    if not (ckpt := cfg.get("ckpt_path")):
        return
    path = Path(str(ckpt)).expanduser()
    hint = "resume with ckpt_path=RUN_DIR/checkpoints/last.ckpt and the run's own overrides"
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such file; {hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # truncated zip, not a torch file, unpickling error
        raise ConfigError(f"ckpt_path={ckpt} is damaged or not a checkpoint ({one_line(err)}); {hint}") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "epoch"} <= set(checkpoint):
        raise ConfigError(f"ckpt_path={ckpt} is not a Lightning training checkpoint (no state_dict and epoch); {hint}")


def check_config(cfg: DictConfig) -> None:
    """Run every start-up check; raises :class:`ConfigError` on the first problem."""
    check_resume(cfg)
    check_model_and_loss(cfg)
    check_implicit(cfg)
    check_ranges(cfg)
    check_split_options(cfg)
    check_split(cfg)
    check_accelerator(cfg)
    check_compile(cfg)
    check_data(cfg)
    check_eval(cfg)
    check_monitor(cfg)
    check_threads(cfg)
    check_extras(cfg)


def option_name(cfg: DictConfig, group: str, default: str = "?") -> str:
    """The option name (``mf``) whose ``_target_`` the config uses, found in ``conf/<group>/``."""
    target = cfg[group]._target_
    names = [name for name, t in group_targets(group).items() if t == target]
    return names[0] if names else default
