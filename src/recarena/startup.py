"""What ``train.py`` checks on its command line before Hydra runs it: that the overrides compose (and that a
launcher's keys derived from the trainer resolve). Hydra's own
errors for an unknown option (``model=no_such_model``) or a mistyped key (``optimzer.lr=1``) span several lines
and exit with 1; here they become the project's one line and exit code 2, like every other user error.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError

from recarena.errors import ConfigError
from recarena.paths import CONF_DIR
from recarena.resolvers import register_resolvers

#: Flags that choose another primary config, take a value that is not an override, or run nothing: the check
#: stands aside.
OTHER_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--cfg", "-c",
                      "--package", "-p", "--info", "--experimental-rerun", "--help", "-h", "--hydra-help",
                      "--version", "--shell-completion", "-sc")  # fmt: skip


def check_overrides(argv: Sequence[str]) -> None:
    """Compose ``conf/train.yaml`` with the command line's overrides (a sweep's ``a,b`` or ``interval(...)``
    values left to Hydra); a failure raises :class:`ConfigError` with Hydra's message on one line."""
    if any(arg.split("=", 1)[0] in OTHER_CONFIG_FLAGS for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=fixed, return_hydra_config=True)
    except HydraException as error:
        raise ConfigError(one_line(error)) from None
    finally:
        GlobalHydra.instance().clear()
    check_launcher_layout(cfg)


#: Launcher keys that conf/hydra/launcher/ presets derive from the trainer (resolved when the sweep launches).
DERIVED_LAUNCHER_KEYS = ("nodes", "tasks_per_node", "gpus_per_node")


def check_launcher_layout(cfg: DictConfig) -> None:
    """Resolve the launcher's keys derived from the trainer now, so that one the trainer cannot give (the SLURM
    preset with ``trainer.devices=auto`` under DDP) is one line before the sweep starts, not a traceback from it."""
    register_resolvers()
    launcher = cfg.hydra.get("launcher") or {}
    for key in (k for k in DERIVED_LAUNCHER_KEYS if k in launcher):
        try:
            launcher[key]
        except InterpolationResolutionError as error:
            raise ConfigError(f"hydra.launcher.{key}: {_innermost(error)}") from None


def _innermost(error: BaseException) -> str:
    """The message of the exception that started a chain (a resolver's own ValueError), on one line."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return str(error).splitlines()[0]


def one_line(error: HydraException) -> str:
    """Hydra's message on one line: a missing option with the available ones, else its first two lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, MissingConfigException) and len(lines) > 2 and lines[1].startswith("Available options"):
        options = [line for line in lines[2:] if not line.startswith(("Config search path", "provider="))]
        return f"{lines[0]}; {lines[1].lower().rstrip(':')}: {', '.join(options)}."
    return " ".join(lines[:2])


def help_text() -> str:
    """``recarena train --help`` (``python train.py --help``): the config groups and their options, read from ``conf/`` (Hydra's own help
    composes the config once per group, ~2 s; ``--hydra-help`` still shows Hydra's flags)."""
    groups = sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    lines = ["recarena train: train and test one recommender configuration.", "",
             "usage: recarena train [group=option ...] [key=value ...]   (-m: a sweep; --cfg job: print the config)",
             "       python train.py ...   (the same, in a source checkout)",
             "", "Config groups (conf/<group>/<option>.yaml):"]  # fmt: skip
    for group in groups:
        options = sorted(p.stem for p in group.rglob("*.yaml") if p.parent == group)
        lines.append(f"  {group.name}: {', '.join(options)}")
    lines += ["", "Every key of conf/train.yaml and of the chosen options can be overridden, e.g. optimizer.lr=0.003.",
              "recarena train --hydra-help: Hydra's own flags."]  # fmt: skip
    return "\n".join(lines)
