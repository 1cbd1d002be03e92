"""The contract every family keeps, checked on every ``conf/model/*.yaml`` (a new family is tested by adding its
YAML): it builds from the datamodule's schema, scores every item without NaN, its training objective falls on a
fixed batch (gradient families) or over sweeps (alternating ones), ``score_all`` ranks items as its pairwise
scores do, and a trained run dir loads and recommends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_class, instantiate

from recarena import load_run
from recarena.build import build_datamodule, build_model
from recarena.checks import group_targets
from recarena.run import train
from tests.conftest import FAST, TINY_DATA, compose_config

MODELS = sorted(group_targets("model"))
#: Families with a training objective (the others are fitted in setup: popularity counts, EASE, ItemKNN).
TRAINED = [
    name
    for name, target in sorted(group_targets("model").items())
    if "no_training" not in get_class(target).provides
]


@pytest.fixture
def built(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))

    def build(model_name: str):
        cfg = compose_config([*TINY_DATA, *FAST, f"model={model_name}"], tmp_path / "run")
        torch.manual_seed(0)
        loss = instantiate(cfg.loss)
        dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
        dm.prepare_data()
        dm.setup("fit")
        model = build_model(cfg, dm)
        model.attach(dm)
        return cfg, dm, model

    return build


def ranks_agree(pairwise: torch.Tensor, all_items: torch.Tensor) -> bool:
    """Whether ``pairwise`` (U, I) is a non-decreasing function of ``all_items`` (U, I) in every row: the same
    ranking (a family may squash its ranking score into a rating, monotonically)."""
    order = all_items.argsort(dim=1)
    return bool(
        (torch.diff(pairwise.gather(1, order), dim=1) >= -1e-5 * pairwise.abs().max().clamp(min=1)).all()
    )


@pytest.mark.parametrize("model_name", MODELS)
def test_family_builds_and_scores_every_item(built, model_name: str) -> None:
    _, dm, model = built(model_name)
    model.eval()
    users = torch.arange(min(dm.schema.n_users, 16))
    with torch.no_grad():
        scores = model.score_all(users)
        pairwise = model(
            users.repeat_interleave(dm.schema.n_items), torch.arange(dm.schema.n_items).repeat(len(users))
        )
    assert scores.shape == (len(users), dm.schema.n_items) and torch.isfinite(scores).all()
    assert ranks_agree(pairwise.view(len(users), -1), scores)


@pytest.mark.parametrize("model_name", MODELS)
def test_score_all_writes_into_the_evaluator_s_block(built, model_name: str) -> None:
    """The evaluator reuses one scores block across chunks (``out=``): the family writes every cell of it, the
    same scores as a fresh result, and returns the block itself."""
    _, dm, model = built(model_name)
    model.eval()
    users = torch.arange(min(dm.schema.n_users, 16))
    block = torch.full((len(users) + 3, dm.schema.n_items), float("nan"))[: len(users)]
    with torch.no_grad():
        fresh = model.score_all(users)
        written = model.score_all(users, out=block)
    assert written.data_ptr() == block.data_ptr() and written.shape == fresh.shape
    torch.testing.assert_close(written, fresh.float(), rtol=1e-5, atol=1e-6)


def test_every_family_but_the_fitted_ones_has_an_objective() -> None:
    assert {"mf", "mlp", "twotower", "siamese", "ials"} <= set(TRAINED) and "ease" not in TRAINED


@pytest.mark.parametrize("model_name", TRAINED)
def test_family_objective_falls(built, model_name: str) -> None:
    _, dm, model = built(model_name)
    loss_fn = model.loss_fn
    batch = next(iter(dm.train_dataloader()))[0]
    if not loss_fn.trains_by_gradient:  # exact sweeps: the objective falls from the initial vectors
        before = float(model.objective())
        for _ in range(3):
            after = float(loss_fn(model, batch))
        assert after * dm.n_train <= before and float(model.objective()) < 0.9 * before
        return
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(40):  # the same batch again and again: the objective must fall
        loss = loss_fn(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses[::10]


@pytest.mark.parametrize("model_name", MODELS)
def test_trained_run_dir_loads_and_recommends(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                              model_name: str) -> None:  # fmt: skip
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    cfg = compose_config([*TINY_DATA, *FAST, f"model={model_name}", "trainer.max_epochs=1"], tmp_path / "run")
    result = train(cfg)
    assert result["model"] == model_name and np.isfinite(result["val"]["val/ndcg@10"])
    run = load_run(tmp_path / "run")
    user = int(run.corpus.user_ids[run.corpus.users[run.split.train][0]])
    frame = run.recommend(user=user, k=5)
    assert len(frame) == 5 and frame["score"].is_monotonic_decreasing


@pytest.mark.parametrize("model_name", MODELS)
def test_declared_capabilities_answer(built, model_name: str) -> None:
    """What a family declares in ``provides`` is what the commands rely on: each declared call answers, and the
    exported vectors compared by the loss give the family's own scores."""
    _, dm, model = built(model_name)
    provides, n_items = type(model).provides, dm.schema.n_items
    model.eval()
    with torch.no_grad():
        vectors = model.item_similarity_vectors()
        assert (vectors is not None and vectors.shape[0] == n_items) == ("item_vectors" in provides)
        if "similar_items" in provides:
            assert model.similar_items(0).shape == (n_items,)
        if "item_biases" in provides:
            assert model.item_biases().shape == (n_items,)
        if "export" in provides:
            users = torch.arange(min(dm.schema.n_users, 8))
            exported = model.loss_fn.compare(model.user_embeddings(users), model.item_embeddings())
            torch.testing.assert_close(exported, model.score_all(users), rtol=1e-4, atol=1e-5)
    assert ("made_up_users" in provides) <= (not model.needs_user_ids)  # a made-up user has no id
