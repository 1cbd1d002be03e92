"""RowwiseAdam (recarena.optim): SparseAdam's lazy update in one pass over the touched rows. Checked against a
hand-computed first step, against torch.optim.SparseAdam itself over many steps (equal tensors on the CPU), across
checkpoints of either, and through optimizer=sparse_adam's ``fused`` switch."""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from recarena.optim import RowwiseAdam, SparseDenseAdam
from recarena.run import train

REPO = Path(__file__).resolve().parents[1]


def _step(table: nn.Embedding, optimizer: torch.optim.Optimizer, rows: list[int], targets: list[float]) -> None:
    loss = (table(torch.tensor(rows)).sum(-1) - torch.tensor(targets)).pow(2).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _table(seed: int = 0, rows: int = 6, dim: int = 3) -> nn.Embedding:
    torch.manual_seed(seed)
    return nn.Embedding(rows, dim, sparse=True)


def test_first_step_by_hand_sums_a_row_s_duplicates_and_leaves_other_rows() -> None:
    """Row 2 appears twice, so its gradient is the sum of both entries'; at step 1 Adam's update is
    -lr·√(1-β2)/(1-β1) · (1-β1)g / (√((1-β2)g²) + ε), about -lr·sign(g) per coordinate."""
    table = _table()
    before = table.weight.detach().clone()
    lr, (b1, b2), eps = 0.1, (0.9, 0.999), 1e-8
    optimizer = RowwiseAdam(table.parameters(), lr=lr, betas=(b1, b2), eps=eps)
    _step(table, optimizer, [2, 4, 2], [10.0, -10.0, 0.0])
    with torch.no_grad():
        residual = before[[2, 4, 2]].sum(-1) - torch.tensor([10.0, -10.0, 0.0])
        grads = {2: 2 * (residual[0] + residual[2]), 4: 2 * residual[1]}  # d/dw of Σ (Σ_k w_k - t)², per coordinate
        for row, g in grads.items():
            m, v = (1 - b1) * g, (1 - b2) * g**2
            expected = before[row] - lr * math.sqrt(1 - b2) / (1 - b1) * m / (v.sqrt() + eps)
            torch.testing.assert_close(table.weight[row], expected.expand(3))
            torch.testing.assert_close(optimizer.state[table.weight]["exp_avg"][row], m.expand(3))
    untouched = [0, 1, 3, 5]
    assert torch.equal(table.weight[untouched], before[untouched])
    assert not optimizer.state[table.weight]["exp_avg_sq"][untouched].any()


@pytest.mark.parametrize("maximize", [False, True])
def test_equals_torch_sparse_adam_over_many_steps(maximize: bool) -> None:
    """Random batches with repeated rows, an LR change half way (as a scheduler writes it): the tables and both
    moments stay equal to SparseAdam's, bit for bit on the CPU."""
    ours, theirs = _table(rows=50, dim=8), _table(rows=50, dim=8)
    opt_ours = RowwiseAdam(ours.parameters(), lr=0.05, maximize=maximize)
    opt_theirs = torch.optim.SparseAdam(theirs.parameters(), lr=0.05, maximize=maximize)
    generator = torch.Generator().manual_seed(3)
    for step in range(40):
        rows = torch.randint(0, 20, (64,), generator=generator).tolist()  # rows 20..49 never touched
        targets = torch.randn(64, generator=generator).tolist()
        if step == 20:
            for optimizer in (opt_ours, opt_theirs):
                optimizer.param_groups[0]["lr"] = 0.01
        _step(ours, opt_ours, rows, targets)
        _step(theirs, opt_theirs, rows, targets)
    assert torch.equal(ours.weight, theirs.weight)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt_ours.state[ours.weight][key], opt_theirs.state[theirs.weight][key])
    assert opt_ours.state[ours.weight]["step"] == opt_theirs.state[theirs.weight]["step"] == 40
    assert torch.equal(ours.weight[20:], _table(rows=50, dim=8).weight[20:])


def test_a_sparse_adam_checkpoint_resumes_in_rowwise_adam() -> None:
    """Same state layout: five SparseAdam steps, then its state_dict loaded into RowwiseAdam, five more steps,
    equal to ten SparseAdam steps."""
    resumed, reference = _table(rows=10), _table(rows=10)
    first = torch.optim.SparseAdam(resumed.parameters(), lr=0.05)
    opt_reference = torch.optim.SparseAdam(reference.parameters(), lr=0.05)
    batches = [([i % 10, (3 * i) % 10, 1], [float(i), -1.0, 0.5]) for i in range(10)]
    for rows, targets in batches[:5]:
        _step(resumed, first, rows, targets)
    second = RowwiseAdam(resumed.parameters(), lr=0.05)
    second.load_state_dict(first.state_dict())
    for rows, targets in batches[5:]:
        _step(resumed, second, rows, targets)
    for rows, targets in batches:
        _step(reference, opt_reference, rows, targets)
    assert torch.equal(resumed.weight, reference.weight)


def test_equals_sparse_adam_on_an_embedding_bag_and_counts_an_empty_gradient_s_step() -> None:
    """An EmbeddingBag with per-sample weights and a padding row (the two-tower's bags), and a batch of padding
    alone (a gradient with no entries: no row moves, but the step count advances, as in SparseAdam)."""
    bags = []
    for _ in range(2):
        torch.manual_seed(0)
        bags.append(nn.EmbeddingBag(12, 4, mode="sum", sparse=True, padding_idx=0))
    optimizers = [RowwiseAdam(bags[0].parameters(), lr=0.05), torch.optim.SparseAdam(bags[1].parameters(), lr=0.05)]
    generator = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, 12, (6, 3), generator=generator) for _ in range(6)] + [torch.zeros(6, 3).long()]
    for items in batches:
        weights = torch.rand(items.shape, generator=generator)
        for bag, optimizer in zip(bags, optimizers, strict=True):
            optimizer.zero_grad()
            bag(items, per_sample_weights=weights).pow(2).sum().backward()
            optimizer.step()
    assert torch.equal(bags[0].weight, bags[1].weight)
    assert optimizers[0].state[bags[0].weight]["step"] == optimizers[1].state[bags[1].weight]["step"] == 7


def test_refuses_a_dense_gradient() -> None:
    table = nn.Embedding(4, 2)  # sparse=False: a dense gradient
    with pytest.raises(RuntimeError, match="needs row-sparse gradients"):
        _step(table, RowwiseAdam(table.parameters()), [0], [1.0])


def test_sparse_dense_adam_s_fused_switch_picks_the_lazy_adam_and_trains_the_same() -> None:
    """optimizer.fused chooses RowwiseAdam (default) or torch's SparseAdam for the tables, AdamW for the rest; five
    steps of each leave equal tables and dense weights."""
    runs = {}
    for fused in (True, False):
        table, dense = _table(), nn.Linear(3, 1)
        torch.nn.init.constant_(dense.weight, 0.5)
        optimizer = partial(SparseDenseAdam, lr=0.05, fused=fused)(
            [table.weight, *dense.parameters()], sparse_params=[table.weight]
        )
        lazy = RowwiseAdam if fused else torch.optim.SparseAdam
        assert [type(part) for part in optimizer._parts] == [lazy, torch.optim.AdamW]
        for step in range(5):
            loss = (dense(table(torch.tensor([step % 6, 2, 2]))).squeeze(-1) - 1.0).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        runs[fused] = (table.weight.detach(), dense.weight.detach())
    assert torch.equal(runs[True][0], runs[False][0]) and torch.equal(runs[True][1], runs[False][1])
    assert not torch.equal(runs[True][0], _table().weight)


@pytest.mark.parametrize(("fused", "lazy"), [("true", RowwiseAdam), ("false", torch.optim.SparseAdam),
                                             ("null", RowwiseAdam)])  # fmt: skip
def test_optimizer_sparse_adam_s_fused_reaches_the_optimiser(fused: str, lazy: type, make_cfg) -> None:
    factory = instantiate(make_cfg("model=mf", "optimizer=sparse_adam", f"optimizer.fused={fused}").optimizer)
    table = _table()
    parts = factory([table.weight], sparse_params=[table.weight])._parts
    assert [type(part) for part in parts] == [lazy]


def test_a_run_s_optimiser_state_resumes_across_the_fused_switch() -> None:
    """SparseDenseAdam's state_dict (what a Lightning checkpoint holds) saved under one setting of ``fused`` and
    loaded under the other, both ways: training goes on as if it had never stopped."""
    batches = [([i % 6, (5 * i) % 6, 2], [float(i % 3), -1.0, 0.5]) for i in range(8)]
    reference = _table()
    whole = SparseDenseAdam([reference.weight], lr=0.05, sparse_params=[reference.weight])
    for rows, targets in batches:
        _step(reference, whole, rows, targets)
    for first_fused in (True, False):
        table = _table()
        first = SparseDenseAdam([table.weight], lr=0.05, sparse_params=[table.weight], fused=first_fused)
        for rows, targets in batches[:4]:
            _step(table, first, rows, targets)
        second = SparseDenseAdam([table.weight], lr=0.05, sparse_params=[table.weight], fused=not first_fused)
        second.load_state_dict(first.state_dict())
        for rows, targets in batches[4:]:
            _step(table, second, rows, targets)
        assert torch.equal(table.weight, reference.weight), first_fused


@pytest.mark.slow
def test_the_optimizer_bench_runs_and_finds_the_tables_equal() -> None:
    args = ["--users", "300", "--items", "200", "--dim", "8", "--batch", "512", "--steps", "5"]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "optimizers.py"), *args], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "speed-up:" in proc.stdout and "tables equal after: yes" in proc.stdout


def test_a_run_s_metrics_do_not_depend_on_the_fused_switch(make_cfg) -> None:
    """train.py with optimizer=sparse_adam, fused and not: the same validation and test metrics, and training
    moved them (against the same run at lr 1e-9)."""
    fused = train(make_cfg("model=mf", "optimizer=sparse_adam"))
    torch_lazy = train(make_cfg("model=mf", "optimizer=sparse_adam", "optimizer.fused=false", "overwrite=true"))
    assert fused["val"] == torch_lazy["val"] and fused["test"] == torch_lazy["test"]
    untrained = train(make_cfg("model=mf", "optimizer=sparse_adam", "optimizer.lr=1e-9", "overwrite=true"))
    assert untrained["test"]["test/rmse"] != fused["test"]["test/rmse"]


def test_optimizer_fused_reaches_torch_s_adam_and_trains_to_the_same_metrics_within_rounding(make_cfg) -> None:
    """optimizer.fused=true builds torch's fused Adam kernel: the same maths, rounded differently."""
    factory = instantiate(make_cfg("model=mf", "optimizer=adam", "optimizer.fused=true").optimizer)
    assert factory([nn.Parameter(torch.zeros(2))]).param_groups[0]["fused"] is True
    default = train(make_cfg("model=mf", "optimizer=adam"))
    fused = train(make_cfg("model=mf", "optimizer=adam", "optimizer.fused=true", "overwrite=true"))
    untrained = train(make_cfg("model=mf", "optimizer=adam", "optimizer.lr=1e-9", "overwrite=true"))
    assert fused["val"]["val/rmse"] == pytest.approx(default["val"]["val/rmse"], abs=1e-4)
    assert abs(untrained["val"]["val/rmse"] - default["val"]["val/rmse"]) > 1e-3
