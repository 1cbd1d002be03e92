"""Fit times of the reference families on one dataset (default ML-100K, the default temporal split).

    python bench/reference.py --threads 2            # EASE and ItemKNN fits, iALS time to its best validation

- ``ease``, ``itemknn``: the fit (``attach``: the matrix, EASE's inverse, ItemKNN's neighbours), median of
  ``--repeats``; targets: under 2 s on ML-100K.
- ``ials``: sweeps with a validation (NDCG@10, the shared evaluator) after each, as training runs them, stopped
  after ``--patience`` sweeps without improvement; prints the time from the start of the fit to the end of the
  best sweep's validation; target: under 30 s on ML-100K.

Each family runs with its preset (``family=<name>``, conf/family/); the thread count is set explicitly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra.utils import instantiate

from recarena.benchmark import compose_family
from recarena.build import build_datamodule, build_model


def build(family: str, overrides: list[str]):
    """The datamodule (loaded and split) and the family's module, before any fitting."""
    cfg = compose_family(family, overrides)
    loss = instantiate(cfg.loss)
    dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
    dm.prepare_data()
    dm.setup("fit")
    return dm, build_model(cfg, dm)


def time_fit(family: str, overrides: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        dm, model = build(family, overrides)
        started = time.perf_counter()
        model.attach(dm)
        seconds.append(time.perf_counter() - started)
    return seconds


def validation_ndcg(model, dm) -> float:
    """Validation NDCG@10 through the evaluator the training loop uses."""
    model.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            model._eval_step(batch, model.val_ranking, model.val_rating)
    model._release_score_block()
    value = float(model.val_ranking.compute()["ndcg@10"])
    model.val_ranking.reset()
    return value


def time_to_best(family: str, overrides: list[str], patience: int, max_sweeps: int) -> tuple[float, int, float]:
    """Seconds from the start of the fit to the best validation, the best sweep (1-based) and its NDCG@10."""
    dm, model = build(family, overrides)
    started = time.perf_counter()
    model.attach(dm)
    best, best_sweep, best_at = -1.0, 0, 0.0
    for sweep in range(1, max_sweeps + 1):
        with torch.no_grad():
            model.sweep()
        value = validation_ndcg(model, dm)
        if value > best:
            best, best_sweep, best_at = value, sweep, time.perf_counter() - started
        elif sweep - best_sweep >= patience:
            break
    return best_at, best_sweep, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly when measuring)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--patience", type=int, default=10, help="iALS: sweeps without improvement before stopping")
    parser.add_argument("--max-sweeps", type=int, default=200)
    parser.add_argument("overrides", nargs="*", default=["data=ml-100k"], help="config overrides, e.g. data=ml-1m")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"reference families on {' '.join(args.overrides)}; {torch.get_num_threads()} threads", flush=True)
    for family in ("ease", "itemknn"):
        seconds = time_fit(family, args.overrides, args.repeats)
        print(f"{family:<8} fit: median {statistics.median(seconds):.3f} s over {len(seconds)} "
              f"(min {min(seconds):.3f}, max {max(seconds):.3f})", flush=True)  # fmt: skip
    seconds, sweep, ndcg = time_to_best("ials", args.overrides, args.patience, args.max_sweeps)
    print(f"ials     best validation NDCG@10 {ndcg:.4f} at sweep {sweep}, {seconds:.1f} s after the fit started")


if __name__ == "__main__":
    main()
