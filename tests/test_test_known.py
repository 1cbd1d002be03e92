"""``eval.test_known``: what every family may know at test time. Under ``train+val`` each family reads the
validation ratings the way it can (fitted families refit, feature families read, iALS folds users in, id families
are retrained on train + validation for their best epoch count), and metrics.json says which protocol ran."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import recarena.run as run_module
from recarena.checks import check_config, family_presets
from recarena.errors import ConfigError
from recarena.models.base import RecommenderModule
from tests.conftest import FAST, TINY_DATA, compose_config


def train_capturing(cfg, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[RecommenderModule], list]:
    """train(cfg), returning metrics.json's content, the models build_model made and the datamodules used."""
    models, modules = [], []
    real = run_module.build_model

    def build(cfg, dm):
        modules.append(dm)
        models.append(real(cfg, dm))
        return models[-1]

    monkeypatch.setattr(run_module, "build_model", build)
    return run_module.train(cfg), models, modules


@pytest.fixture
def cfg_for(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    return lambda *overrides: compose_config([*TINY_DATA, *FAST, *overrides], tmp_path / "run")


@pytest.mark.parametrize("family", list(family_presets()))
def test_every_family_is_tested_with_train_and_validation_known(cfg_for, monkeypatch, family: str) -> None:
    result, models, dms = train_capturing(cfg_for(f"family={family}", "eval.test_known=train+val"), monkeypatch)
    assert result["test_known"] == "train+val" and np.isfinite(result["test"]["test/ndcg@10"])
    refit = models[0].test_inputs == "refit"
    assert (result["test_refit_epochs"] is not None) == refit
    if refit:
        assert (Path(result["best_checkpoint"]).parent / "refit.ckpt").is_file()
        assert len(models) >= 2 and result["test_refit_epochs"] == result["best_epoch"]  # [2]: load_run's
        refit_split = dms[1].split
        assert np.array_equal(refit_split.train, np.sort(np.concatenate([dms[0].split.train, dms[0].split.val])))
        assert len(refit_split.val) == 0 and np.array_equal(refit_split.test, dms[0].split.test)


def test_the_default_is_training_ratings_only(cfg_for, monkeypatch) -> None:
    result, models, dms = train_capturing(cfg_for("family=popularity"), monkeypatch)
    assert result["test_known"] == "train" and result["test_refit_epochs"] is None
    counts = np.bincount(dms[0].corpus.items[dms[0].split.train], minlength=dms[0].schema.n_items)
    np.testing.assert_array_equal(models[0].popularity.numpy(), counts)


def test_read_families_take_the_validation_ratings_at_test_time(cfg_for, monkeypatch) -> None:
    _, models, dms = train_capturing(cfg_for("family=popularity", "eval.test_known=train+val"), monkeypatch)
    dm = dms[0]
    rows = dm.test_input_rows
    assert np.array_equal(rows, np.sort(np.concatenate([dm.split.train, dm.split.known, dm.split.val])))
    np.testing.assert_array_equal(models[0].popularity.numpy(),
                                  np.bincount(dm.corpus.items[rows], minlength=dm.schema.n_items))  # fmt: skip


def test_ease_scores_test_users_from_their_validation_likes_too(cfg_for, monkeypatch) -> None:
    _, models, dms = train_capturing(cfg_for("family=ease", "eval.test_known=train+val"), monkeypatch)
    model, dm = models[0], dms[0]
    val = dm.split.val[dm.corpus.ratings[dm.split.val] >= model.positive_threshold]
    users, items = torch.from_numpy(dm.corpus.users[val].astype(np.int64)), dm.corpus.items[val]
    assert len(val) and (model.history.dense(users)[torch.arange(len(val)), items] == 1).all()


def test_ials_folds_users_in_from_the_ratings_given(cfg_for, monkeypatch) -> None:
    _, models, dms = train_capturing(cfg_for("family=ials"), monkeypatch)
    model, dm = models[0], dms[0]
    items = model.item_factors.clone()
    model.read_inputs(dm.corpus, dm.split, dm.split.train)
    trained_users = model.user_factors.clone()
    model.read_inputs(dm.corpus, dm.split, np.concatenate([dm.split.train, dm.split.val]))
    assert torch.equal(model.item_factors, items)  # a fold-in solves users only
    changed = (model.user_factors - trained_users).abs().sum(1) > 1e-6
    val = dm.split.val[dm.corpus.ratings[dm.split.val] >= model.positive_threshold]
    liked_in_val = np.zeros(dm.schema.n_users, dtype=bool)
    liked_in_val[dm.corpus.users[val]] = True
    assert liked_in_val.any() and torch.equal(changed, torch.from_numpy(liked_in_val))


def test_an_unknown_protocol_is_refused_at_start_up(cfg_for) -> None:
    with pytest.raises(ConfigError, match=r"eval.test_known must be one of train, train\+val"):
        check_config(cfg_for("eval.test_known=everything"))
