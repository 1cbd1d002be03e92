"""Lazy Adam over large embedding tables: recarena's RowwiseAdam against torch's SparseAdam, side by side.

Two copies of the same MF tables (sparse gradients, as ``optimizer=sparse_adam`` builds them) take the same
batches, alternated step by step in one process (which side goes first swaps every step): forward, backward,
then each side's optimiser step, which is what is timed. RowwiseAdam computes SparseAdam's update in the same
order, so the tables must stay equal: on the CPU the bench stops if they are not; on a GPU it prints whether they
are. Defaults: ML-25M's shape (162,541 users x 62,423 items, 50 factors) at batch 65,536.

    python bench/optimizers.py --threads 1
    python bench/optimizers.py --threads 2 --batch 8192
    python bench/optimizers.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from recarena.optim import RowwiseAdam

SIDES = {"torch SparseAdam": torch.optim.SparseAdam, "recarena RowwiseAdam": RowwiseAdam}


def tables(users: int, items: int, dim: int, device: torch.device) -> nn.ModuleList:
    """MF's user and item tables with sparse gradients, the same initial values for every call."""
    torch.manual_seed(0)
    return nn.ModuleList([nn.Embedding(users, dim, sparse=True), nn.Embedding(items, dim, sparse=True)]).to(device)


def step_seconds(model: nn.ModuleList, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]) -> float:
    """One MF step under the squared error; returns the seconds of the optimiser step alone."""
    users, items, ratings = batch
    loss = ((model[0](users) * model[1](items)).sum(-1) - ratings).pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _sync(ratings.device)
    started = time.perf_counter()
    optimizer.step()
    _sync(ratings.device)
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tables_equal(ours: nn.ModuleList, theirs: nn.ModuleList) -> bool:
    return all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))


def main() -> None:
    """Time both optimisers over the same batches and print their median step and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=62_423)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side (after 3 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sides = {}
    for name, cls in SIDES.items():
        model = tables(args.users, args.items, args.dim, device)
        sides[name] = (model, cls(model.parameters(), lr=1e-3))
    generator = torch.Generator(device=device).manual_seed(1)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for step in range(3 + args.steps):
        batch = (torch.randint(0, args.users, (args.batch,), device=device, generator=generator),
                 torch.randint(0, args.items, (args.batch,), device=device, generator=generator),
                 5 * torch.rand(args.batch, device=device, generator=generator))  # fmt: skip
        for name in list(sides)[:: 1 if step % 2 else -1]:
            spent = step_seconds(*sides[name], batch)
            if step >= 3:
                seconds[name].append(spent)
    equal = tables_equal(sides["recarena RowwiseAdam"][0], sides["torch SparseAdam"][0])
    assert equal or device.type != "cpu", "RowwiseAdam and SparseAdam tables differ"
    print(f"{device}, {args.threads} thread(s); {args.users:,} users x {args.items:,} items x {args.dim}, "
          f"batch {args.batch:,}; median optimiser step over {args.steps} alternated steps; tables equal after: "
          f"{'yes' if equal else 'NO'}")
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    for name, median in medians.items():
        print(f"  {name:<22} {median * 1e3:8.2f} ms")
    print(f"  speed-up: {medians['torch SparseAdam'] / medians['recarena RowwiseAdam']:.2f}x")


if __name__ == "__main__":
    main()
