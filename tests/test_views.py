"""Training views: every row once per epoch, reproducible, grouped mini-batches, disjoint DDP shards."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from recarena.build import build_datamodule
from recarena.data.views import ShuffledBatches, residency
from recarena.errors import ConfigError
from tests.conftest import TINY_DATA, compose_config


def _columns(n: int) -> dict[str, torch.Tensor]:
    return {"users": torch.arange(n), "items": torch.arange(n) * 10, "ratings": torch.arange(n, dtype=torch.float32)}


def _rows(view: ShuffledBatches) -> list[torch.Tensor]:
    return [batch["users"] for group in view for batch in group]


@pytest.mark.parametrize(("n", "batch", "group"), [(10, 3, 1), (10, 3, 2), (1000, 64, 8), (5, 10, 4)])
def test_each_row_once_per_epoch_in_groups(n: int, batch: int, group: int) -> None:
    view = ShuffledBatches(_columns(n), batch, seed=1, group=group)
    groups = list(view)
    assert len(groups) == len(view)
    assert all(1 <= len(g) <= group for g in groups)
    seen = torch.cat(_rows(ShuffledBatches(_columns(n), batch, seed=1, group=group)))
    assert sorted(seen.tolist()) == list(range(n))
    assert view.minibatches_per_epoch == -(-n // batch)
    # Columns stay aligned row by row.
    for g in groups:
        for b in g:
            assert torch.equal(b["items"], b["users"] * 10)


def test_epochs_differ_and_runs_repeat() -> None:
    first, second = ShuffledBatches(_columns(50), 50, seed=3), ShuffledBatches(_columns(50), 50, seed=3)
    e1, e2 = _rows(first), _rows(first)
    assert not torch.equal(e1[0], e2[0])  # a new permutation each epoch
    assert torch.equal(_rows(second)[0], e1[0])  # same seed, same order


def test_grouping_keeps_the_minibatch_sequence() -> None:
    flat = _rows(ShuffledBatches(_columns(100), 7, seed=5, group=1))
    grouped = _rows(ShuffledBatches(_columns(100), 7, seed=5, group=4))
    assert all(torch.equal(a, b) for a, b in zip(flat, grouped, strict=True))


def test_ddp_shards_are_disjoint_and_equal_length() -> None:
    shards = [ShuffledBatches(_columns(101), 8, seed=0, rank=r, world_size=2) for r in range(2)]
    rows = [torch.cat(_rows(s)) for s in shards]
    assert len(rows[0]) == len(rows[1]) == 50
    assert not set(rows[0].tolist()) & set(rows[1].tolist())
    assert len(shards[0]) == len(shards[1])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        ShuffledBatches({"a": torch.zeros(3), "b": torch.zeros(4)}, 2)
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(_columns(3), 0)


def test_set_epoch_gives_that_epochs_order_as_lightning_calls_it_on_resume() -> None:
    """Lightning calls ``loader.sampler.set_epoch(e)`` every epoch; a fresh loader set to epoch 2 (a resumed run)
    yields exactly the third epoch of a loader that ran from the start."""
    tensors = {"users": torch.arange(50), "items": torch.arange(50) * 2}
    straight = ShuffledBatches(tensors, batch_size=8, seed=3)
    epochs = [[b["users"] for group in straight for b in group] for _ in range(3)]
    resumed = ShuffledBatches(tensors, batch_size=8, seed=3)
    assert resumed.sampler is resumed
    resumed.sampler.set_epoch(2)
    third = [b["users"] for group in resumed for b in group]
    assert all(torch.equal(a, b) for a, b in zip(third, epochs[2], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(epochs[1], epochs[2], strict=True))


def test_batches_are_views_of_the_epochs_permuted_copy() -> None:
    """No per-batch gather or copy: each epoch permutes every column once, where the columns live (on a GPU with
    data.device_resident, the device), and every batch of that epoch is a slice of that one copy."""
    tensors = {"users": torch.arange(1000), "ratings": torch.rand(1000)}
    for device in (None, torch.device("cpu")):
        loader = ShuffledBatches(tensors, batch_size=64, seed=3, group=4, device=device)
        for _ in range(2):
            storages = {name: set() for name in tensors}
            for group in loader:
                for batch in group:
                    for name, column in batch.items():
                        assert column._base is not None  # a view
                        storages[name].add(column.untyped_storage().data_ptr())
            for name, seen in storages.items():
                assert len(seen) == 1 and seen != {tensors[name].untyped_storage().data_ptr()}, name
    # Where the columns live changes nothing in what an epoch yields.
    here = [b["users"] for g in ShuffledBatches(tensors, 64, seed=3) for b in g]
    moved = [b["users"] for g in ShuffledBatches(tensors, 64, seed=3, device="cpu") for b in g]
    assert all(torch.equal(a, b) for a, b in zip(here, moved, strict=True))


@pytest.mark.parametrize(
    ("option", "device", "view_gb", "free_gb", "expected"),
    [
        ("auto", "cpu", 0.7, None, "host"),  # a CPU run: the view is where the model is
        (True, "cpu", 0.7, None, "host"),
        ("auto", "cuda", 0.7, 70.0, "device"),  # ML-25M's pairs on an H100
        ("auto", "cuda", 0.7, 1.2, "pinned"),  # more than half the free memory: the fallback
        ("auto", "cuda", 0.6, 1.2, "device"),  # exactly half still fits
        (True, "cuda", 0.7, 1.2, "device"),  # asked for: no fallback
        (False, "cuda", 0.7, 70.0, "pinned"),
    ],
)
def test_residency_of_the_training_view(option, device: str, view_gb: float, free_gb, expected: str) -> None:
    free = None if free_gb is None else int(free_gb * 1e9)
    assert residency(option, torch.device(device), int(view_gb * 1e9), free) == expected


def test_a_view_that_cannot_fit_with_the_fallback_disabled_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"data.device_resident=true: the training view \(0.70 GB\) does not fit"):
        residency(True, torch.device("cuda"), int(0.7e9), int(0.5e9))
    assert residency("auto", torch.device("cuda"), int(0.7e9), int(0.5e9)) == "pinned"  # auto falls back instead


@pytest.mark.parametrize(("option", "expected"), [("auto", "meta"), (True, "meta"), (False, "cpu")])
def test_evaluation_chunks_are_cut_where_the_data_lives(option, expected: str, tmp_path, data_cache, monkeypatch):
    """On an accelerator (here the meta device, which has tensors but no memory) the evaluation columns go to the
    device once and every chunk is cut there; data.device_resident=false keeps them on the host."""
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    cfg = compose_config([*TINY_DATA, f"data.device_resident={str(option).lower()}"], tmp_path)
    dm = build_datamodule(cfg, "pairs")
    dm.prepare_data()
    dm.setup("fit")
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0,
                                 world_size=1)  # fmt: skip
    batches = list(dm.val_dataloader())
    assert batches and {t.device.type for b in batches for t in b.values()} == {expected}
