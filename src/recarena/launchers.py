"""Hydra launchers a sweep can run on, checked before Hydra composes: ``hydra/launcher=NAME`` needs its plugin
installed, and without it Hydra's own error lists configs rather than what to install. Imports nothing heavy, so
``train.py`` runs the check before torch is loaded."""

from __future__ import annotations

import importlib.util

from omegaconf import OmegaConf

from recarena.errors import ConfigError
from recarena.paths import CONF_DIR

#: Hydra launcher configs that a plugin provides -> (its module, the pip extra that installs it).
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "launchers"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
}


def check_launcher_plugin(overrides: list[str]) -> None:
    """Refuse ``hydra/launcher=NAME`` (a plugin's config, or one of conf/hydra/launcher/ built on it) when its
    plugin is not installed, naming the extra that installs it."""
    names = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("hydra/launcher=")]
    for name in names:
        preset = CONF_DIR / "hydra" / "launcher" / f"{name}.yaml"
        base = [str(d) for d in OmegaConf.load(preset).get("defaults", [])] if preset.is_file() else [name]
        for plugin in (b for b in base if b in LAUNCHER_PLUGINS):
            module, extra = LAUNCHER_PLUGINS[plugin]
            if not _importable(module):
                raise ConfigError(f"hydra/launcher={name} needs Hydra's {plugin} launcher plugin: "
                                  f"pip install 'recarena[{extra}]'.")  # fmt: skip


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package (hydra_plugins) is missing too
        return False
