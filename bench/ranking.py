"""Full-catalogue ranking through recarena's evaluator against a bare loop, side by side in one process.

Both sides score the same synthetic users x items in chunks of ``--chunk`` users with one matmul of random factors,
push every user's seen items to -inf, take the top 20 and count the held-out items in it. The bare side is that and
nothing else, a fresh scores tensor per chunk (its hit count is the check that both found the same lists);
recarena's side scores into one reused block as a run's ``score_all`` does (``matmul_into``), then
``RankingMetrics.update`` (every metric at K = 10, 20, seeded tie order). Issue target: >= 0.85x of bare.

    python bench/ranking.py --users 20000 --items 20000 --threads 2
    python bench/ranking.py --users 162541 --items 62423 --seen 150 --threads 2    # ML-25M's shape
"""

from __future__ import annotations

import argparse
import time

import torch

from recarena.evaluation.metrics import RankingMetrics
from recarena.evaluation.ranking import matmul_into


def synthetic(users: int, items: int, seen: int, heldout: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Factors, and each user's seen and held-out items (uniform, distinct within the two sets' union)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.rand(users, items, generator=g).argsort(dim=1)[:, : seen + heldout] if users * items <= 4e8 else \
        torch.randint(0, items, (users, seen + heldout), generator=g)  # fmt: skip
    return {"u": torch.randn(users, dim, generator=g), "v": torch.randn(items, dim, generator=g),
            "seen": picks[:, :seen], "held": picks[:, seen:]}  # fmt: skip


def chunk_batch(data: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """The evaluator's batch dict (:mod:`recarena.data.heldout`) of users ``start .. stop-1``."""
    n = stop - start
    seen, held = data["seen"][start:stop], data["held"][start:stop]
    rows = torch.arange(n, device=seen.device)
    return {"users": torch.arange(start, stop), "excl_row": rows.repeat_interleave(seen.shape[1]),
            "excl_item": seen.reshape(-1), "held_row": rows.repeat_interleave(held.shape[1]),
            "held_item": held.reshape(-1), "held_rating": torch.full((held.numel(),), 5.0, device=held.device)}  # fmt: skip


def bare(data: dict[str, torch.Tensor], chunk: int, k: int = 20) -> tuple[float, int]:
    """matmul, -inf on the seen items, topk, hits: the least a full-catalogue top-k evaluation does."""
    started, hits = time.perf_counter(), 0
    for start in range(0, len(data["u"]), chunk):
        stop = min(start + chunk, len(data["u"]))
        scores = data["u"][start:stop] @ data["v"].T
        rows = torch.arange(stop - start, device=scores.device)[:, None]
        scores[rows, data["seen"][start:stop]] = float("-inf")
        top = scores.topk(k, dim=1).indices
        hits += int((top[:, :, None] == data["held"][start:stop, None, :]).any(-1).sum())
    return time.perf_counter() - started, hits


def ours(data: dict[str, torch.Tensor], chunk: int) -> tuple[float, int]:
    items = len(data["v"])
    metric = RankingMetrics([10, 20], items, torch.ones(items), relevance_threshold=None, tie_seed=0)
    started = time.perf_counter()
    block = torch.empty(min(chunk, len(data["u"])), items, device=data["v"].device)  # as a run: one scores block
    for start in range(0, len(data["u"]), chunk):
        stop = min(start + chunk, len(data["u"]))
        scores = matmul_into(data["u"][start:stop], data["v"].T, block[: stop - start])
        metric.update(scores, chunk_batch(data, start, stop), overwrite=True)
    hits = float(metric.compute()["precision@20"]) * 20 * len(data["u"])
    return time.perf_counter() - started, round(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--seen", type=int, default=100, help="seen (excluded) items per user")
    parser.add_argument("--heldout", type=int, default=10, help="held-out items per user")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=2048, help="users per chunk (eval.user_chunk)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each side; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = synthetic(args.users, args.items, args.seen, args.heldout, args.dim, seed=0)
    times: dict[str, list[float]] = {"bare": [], "recarena": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("recarena", ours)):
            seconds, hits = fn(data, args.chunk)
            times[name].append(seconds)
            print(f"  {name:9s} {seconds:7.3f} s  hits in the top 20: {hits}", flush=True)
    best = {name: min(values) for name, values in times.items()}
    print(f"{args.users:,} users x {args.items:,} items, {args.threads} threads: bare {best['bare']:.3f} s, "
          f"recarena {best['recarena']:.3f} s, ratio {best['bare'] / best['recarena']:.2f}x of bare")


if __name__ == "__main__":
    main()
