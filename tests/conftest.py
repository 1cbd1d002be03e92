"""Shared fixtures: compose the real configs through Hydra's compose API, shrink them, run the real train()."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from recarena import paths, threads
from recarena.build import NOT_FOR_US, compose
from recarena.checks import family_presets

if TYPE_CHECKING:
    from recarena.models.base import RecommenderModule


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``pytest -n auto``) each worker takes its share of the cores, for its
    own torch and for the train.py processes its tests start (``OMP_NUM_THREADS``, which ``threads: auto``
    reads): workers that each used every core would oversubscribe them, and torch's spin-waiting threads then run
    several times slower (README "Threads")."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(threads.available_cores() // workers, 1)))  # the user's wins
        threads.use_threads(int(os.environ["OMP_NUM_THREADS"]))


#: The user's real data cache, read before any fixture points RECARENA_DATA at a temporary one.
REAL_DATA_CACHE = Path(os.environ.get("RECARENA_DATA", Path.home() / ".cache" / "recarena")).expanduser()

#: Small but not trivial: every model learns something in one or two epochs, in about a second. The data of
#: `python train.py debug=tiny` (conf/debug/tiny.yaml), read from there, so the tests and users share it.
TINY_DATA = ["data=synthetic", *(f"data.{key}={value}" for key, value in
                                 OmegaConf.load(paths.CONF_DIR / "debug" / "tiny.yaml").data.items())]  # fmt: skip
FAST = ["trainer=cpu", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "verbose=false"]


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python train.py <overrides>` would run, in the run dir ``output_dir``: :func:`recarena.compose`,
    the plain-Python entry point users have (its ``hydra`` node carries the job's overrides and chosen options to
    ``train()``; nothing global is set)."""
    return compose(*overrides, output_dir=output_dir)


@pytest.fixture(autouse=True)
def _lightning_warnings_as_in_a_run() -> None:
    """The Lightning warnings a run silences (``recarena.build.NOT_FOR_US``, set when ``recarena.build`` is imported)
    are silenced in each test too: pytest restores its own warning filters around every test, which drops filters
    set at import time, and the warnings that do apply would be lost among the ones that do not."""
    for message in NOT_FOR_US:
        warnings.filterwarnings("ignore", message=message)


@pytest.fixture(autouse=True)
def _no_pypi_only_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide the ML-100K source themselves, whatever RECARENA_PYPI_ONLY the shell has."""
    monkeypatch.delenv("RECARENA_PYPI_ONLY", raising=False)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data cache for the whole session (synthetic corpora and splits are cached by their settings)."""
    path = tmp_path_factory.mktemp("data-cache")
    return path


@pytest.fixture
def make_cfg(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, tiny=True)`` -> a composed config on tiny synthetic data, CPU, 2 epochs."""
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))

    def make(*overrides: str, tiny: bool = True, fast: bool = True) -> DictConfig:
        base = (TINY_DATA if tiny else []) + (FAST if fast else [])
        return compose_config([*base, *overrides], tmp_path / "run")

    return make


def ml100k_cache() -> Path:
    """The real ML-100K cache; tests that need it fail (not skip) with the way to fill it when it is missing."""
    root = REAL_DATA_CACHE
    candidates = [root / "ml-100k", root / "ml-100k-recbole"]
    if not any(p.exists() and any(p.iterdir()) for p in candidates):
        pytest.fail(
            f"MovieLens-100K is not in the data cache ({root}). Fill it with `make data` "
            "(or `python -m recarena.data.sources fetch ml-100k`), then rerun the tests."
        )
    return root


#: Test-only settings of some family presets (fewer epochs where one shows what the tests need).
QUICKER = {"siamese": ["trainer.max_epochs=1"]}
#: The runs of :func:`trained`: one per family preset of conf/family/, on the tiny data.
FAMILIES = {name: [f"family={name}", *QUICKER.get(name, [])] for name in family_presets()}
#: More runs :func:`trained` knows, for tests that need a variant of a family (not parametrised over).
VARIANTS = {
    "siamese-no-ids": ["family=siamese", "trainer.max_epochs=1", "model.item_ids=false"],
    "siamese-text": ["family=siamese", "trainer.max_epochs=1", "model.encoding=text"],
}
Trained = Callable[[str], tuple[Path, "RecommenderModule"]]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> Trained:
    """``trained(family)`` -> (run dir, the model train() built, in memory), each family (or variant) trained once
    per test session.

    After train() the in-memory model holds the best checkpoint's weights (the test loop loaded them), so it is
    what a loaded run must reproduce.
    """
    import recarena.run as run_module  # Lightning: only for the tests that train

    runs: dict[str, tuple[Path, RecommenderModule]] = {}

    def get(family: str) -> tuple[Path, RecommenderModule]:
        if family not in runs:
            out = tmp_path_factory.mktemp(family) / "run"
            built: list[RecommenderModule] = []
            real = run_module.build_model
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("RECARENA_DATA", str(data_cache))
                mp.setattr(run_module, "build_model", lambda cfg, dm: built.append(real(cfg, dm)) or built[-1])
                run_module.train(compose_config([*TINY_DATA, *FAST, *{**FAMILIES, **VARIANTS}[family]], out))
            runs[family] = (out, built[0].eval())
        return runs[family]

    return get


def global_mean_rmse(run_dir: Path) -> float:
    """RMSE on a run's test ratings of predicting the training mean for each: the bar a rating family clears."""
    from recarena.inference import load_run

    run = load_run(run_dir)
    ratings = np.asarray(run.corpus.ratings, dtype=np.float64)
    return float(np.sqrt(((ratings[run.split.test] - ratings[run.split.train].mean()) ** 2).mean()))
