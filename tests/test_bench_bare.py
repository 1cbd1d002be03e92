"""bench/bare.py writes each family's maths out in plain PyTorch: with recarena's parameters copied in, a bare
model's loss on a batch equals recarena's loss on it (dropout off), so the throughput bench's ratio compares the
same maths, and a bare model that drifted from its family would fail here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from recarena.build import build_datamodule, build_model
from tests.conftest import FAST, TINY_DATA, compose_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bare import bare_maths  # noqa: E402

NO_DROPOUT = ["model.dropout=0", "model.input_dropout=0"]
#: family preset -> (extra overrides, bare parameter name -> recarena parameter name)
CASES = {
    "mf": ([], {"p.weight": "user_factors.weight", "q.weight": "item_factors.weight",
                "b_u.weight": "user_bias.weight", "b_i.weight": "item_bias.weight"}),
    "mlp": (["model.dropout=0"], {"p.weight": "user_factors.weight", "q.weight": "item_factors.weight",
                                  "net.0.weight": "first.weight", "net.0.bias": "first.bias",
                                  "net.3.weight": "rest.2.weight", "net.3.bias": "rest.2.bias"}),
    **{family: (NO_DROPOUT, {
        "feature_layer.weight": "item_tower.feature_layer.weight", "feature_layer.bias": "item_tower.feature_layer.bias",
        "id_table.weight": "item_tower.id_embedding.table.weight", "id_layer.weight": "item_tower.id_layer.weight",
        "id_layer.bias": "item_tower.id_layer.bias", "bias.weight": "item_tower.bias.weight",
        "history.weight": "user_tower.history.table.weight", "no_history": "user_tower.no_history",
        "user_layer.weight": "user_tower.layer.weight", "user_layer.bias": "user_tower.layer.bias",
    }) for family in ("twotower_mse", "twotower_inbatch", "twotower_logq")},
    "siamese": ([], {"first.weight": "first.weight", "first_bias": "first_bias", "id_rows.weight": "id_rows.weight"}),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(CASES))
def test_bare_maths_is_the_family_s_loss(family: str, tmp_path: Path, data_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    overrides, names = CASES[family]
    cfg = compose_config([*TINY_DATA, *FAST, f"family={family}", *overrides], tmp_path / "run")
    loss = instantiate(cfg.loss)
    dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    module = build_model(cfg, dm)
    module.attach(dm)
    bare = bare_maths(cfg, dm.schema, dm)
    assert {name for name, _ in bare.named_parameters()} == set(names)  # every bare parameter is recarena's
    with torch.no_grad():
        for bare_name, ours in names.items():
            value = module.get_parameter(ours)
            target = bare.get_parameter(bare_name)
            target[: len(value)] = value  # the Siamese bag table has one more (padding) row, zero
    batch = {name: column[:64] for name, column in dm.train_tensors.items()}
    torch.testing.assert_close(bare.loss({name: batch[name] for name in bare.columns}), module.training_loss(batch))
    bare.loss({name: batch[name] for name in bare.columns}).backward()  # and it trains every parameter
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bare.parameters())
