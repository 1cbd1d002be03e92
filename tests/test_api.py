"""The plain-Python entry point: ``recarena.compose`` / ``recarena.fit`` / ``recarena.train`` from a notebook or a
script, with no ``@hydra.main`` and no Hydra state set up by the caller (or left behind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import recarena
from recarena.build import _keyword_overrides
from tests.conftest import FAST, TINY_DATA


@pytest.fixture(autouse=True)
def _no_hydra_state() -> None:
    """Whatever an earlier test left (conftest's compose_config sets Hydra's job config): a notebook has none."""
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_keyword_options_become_hydra_overrides() -> None:
    options = {"model": "mf", "optimizer": {"lr": 0.001}, "eval": {"ks": [10, 20]}, "test": False, "ckpt_path": None}
    assert _keyword_overrides(options) == ["model=mf", "optimizer.lr=0.001", "eval.ks=[10,20]", "test=false",
                                           "ckpt_path=null"]  # fmt: skip


def test_compose_gives_the_train_config_and_leaves_no_hydra_state(tmp_path: Path) -> None:
    cfg = recarena.compose("model=mf", "loss=bpr", output_dir=tmp_path / "run", trainer={"max_epochs": 3})
    assert not HydraConfig.initialized() and not GlobalHydra.instance().is_initialized()
    assert cfg.trainer.max_epochs == 3 and cfg.loss._target_.endswith("BPRLoss")
    # ${hydra:...} of conf/ answered from the config's own hydra node: nothing global is needed to resolve it.
    body = OmegaConf.to_container(cfg, resolve=False)
    del body["hydra"]
    assert not [s for s in _strings(body) if "${hydra:" in s]
    assert cfg.run_name == "mf-bpr-ml-100k"
    assert cfg.trainer.default_root_dir == str(tmp_path / "run")
    assert list(cfg.hydra.overrides.task) == ["model=mf", "loss=bpr", "trainer.max_epochs=3"]


def test_compose_without_a_run_dir_makes_a_new_one_per_process_under_outputs() -> None:
    cfg = recarena.compose()
    output_dir = Path(cfg.hydra.runtime.output_dir)
    assert output_dir.is_absolute() and output_dir.relative_to(Path.cwd() / "outputs")
    assert output_dir.name.endswith(str(__import__("os").getpid()))


def test_compose_rejects_an_unknown_option() -> None:
    with pytest.raises(ConfigCompositionException, match="nosuchmodel"):
        recarena.compose("model=nosuchmodel")


def test_train_from_python_records_its_overrides_and_leaves_a_loadable_run(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    run_dir = tmp_path / "run"
    metrics = recarena.train(*TINY_DATA, *FAST, model="mf", loss="bpr", optimizer={"lr": 0.01}, output_dir=run_dir)
    assert metrics == json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["model"], metrics["loss"], metrics["epochs"]) == ("mf", "bpr", 2)
    assert {"model=mf", "loss=bpr", "optimizer.lr=0.01"} <= set(metrics["overrides"])
    assert "optimizer.lr=0.01" in metrics["config_key"] and metrics["test"]["test/ndcg@10"] > 0
    assert "hydra" not in OmegaConf.load(run_dir / "config.yaml")  # the run's config, not Hydra's
    assert (run_dir / "export").is_dir()  # after_run.export ran, as under train.py
    run = recarena.load_run(run_dir)
    assert len(run.recommend(users=[int(run.corpus.user_ids[0])], k=5)) == 5
    assert not HydraConfig.initialized()


def test_fit_is_train_of_a_composed_config(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    cfg = recarena.compose(*TINY_DATA, *FAST, "model=popularity", output_dir=tmp_path / "run")
    metrics = recarena.fit(cfg)
    assert metrics["model"] == "popularity" and (tmp_path / "run" / "metrics.json").is_file()
    assert "hydra" in cfg  # the caller's config is left as it was
