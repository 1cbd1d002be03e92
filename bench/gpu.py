"""recarena on one GPU against bare eager PyTorch, side by side in one process: one table, a few minutes.

The MF and MLP rows generate their data on the device (no files to carry; the project and torch are all it needs):

- **MF epoch** over ``--ratings`` synthetic ratings (default ML-25M's size) at batch 1,024 and 65,536:
  recarena (``model=mf loss=mse`` as conf/ configures it, the device-resident :class:`ShuffledBatches` of
  ``data.device_resident``, its training step, through Lightning's ``Trainer``) against the same maths in a bare
  loop over the same device tensors (:func:`bench.bare.bare_maths`). Each side runs ``--steps`` optimiser
  steps after a warm-up; the time is extrapolated to one epoch. The same with ``compile=`` (``--compile``,
  CUDA graphs by default), with ``optimizer=sparse_adam`` and with ``trainer.precision=bf16-mixed`` at the
  large batch: the rows that choose ``conf/trainer/gpu.yaml``'s defaults.
- **MLP epoch** the same way, against :class:`bench.bare.BareMLP`.
- **twotower_logq and mlp epochs through train.py's pipeline**: synthetic data generated, split and viewed as a run
  does (on the CPU, ~1 minute at 25M), then ``--pipeline-seconds`` of training extrapolated to an epoch.
- **Full-catalogue top-20** over ``--eval-users`` x ``--items``: recarena's evaluator (``RankingMetrics``) against
  a bare matmul + -inf on the seen items + ``topk`` (:mod:`bench.ranking`'s two sides).
- **Peak GPU memory** of the whole script.

    python bench/gpu.py                                   # on a GPU, ML-25M's sizes
    python bench/gpu.py --device cpu --ratings 200000 --users 2000 --items 1000 --eval-users 2000 --steps 20
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from recarena.build import compose
from recarena.data.views import ShuffledBatches
from recarena.losses.pointwise import MSELoss
from recarena.schema import Schema
from recarena.timing import EpochTimer

try:  # run as a script from the repository (python bench/gpu.py) or as a module (python -m bench.gpu)
    from bare import bare_maths
    from ranking import bare as bare_ranking
    from ranking import ours as our_ranking
    from ranking import synthetic
    from throughput import config, datamodule, recarena_side
except ImportError:
    from bench.bare import bare_maths
    from bench.ranking import bare as bare_ranking
    from bench.ranking import ours as our_ranking
    from bench.ranking import synthetic
    from bench.throughput import config, datamodule, recarena_side


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ratings_on(device: torch.device, n: int, users: int, items: int) -> dict[str, torch.Tensor]:
    """``n`` (user, item, rating) rows drawn on the device: half-star ratings from a rank-8 taste model."""
    g = torch.Generator(device=device).manual_seed(0)
    u = torch.randint(0, users, (n,), device=device, generator=g)
    i = torch.randint(0, items, (n,), device=device, generator=g)
    taste = (torch.randn(users, 8, device=device, generator=g)[u] * torch.randn(items, 8, device=device, generator=g)[i])
    ratings = (3.0 + taste.sum(-1) / 2).clamp(0.5, 5.0).mul(2).round().div(2)
    return {"users": u, "items": i, "ratings": ratings, "rows": torch.arange(n, device=device)}


class _Data(L.LightningDataModule):
    """What a family's ``attach`` and Lightning's fit read, over tensors already on the device."""

    def __init__(self, tensors: dict[str, torch.Tensor], schema: Schema, batch: int, group: int) -> None:
        super().__init__()
        self.train_tensors, self.schema, self.batch, self.group = tensors, schema, batch, group
        self.item_popularity = torch.bincount(tensors["items"], minlength=schema.n_items).float().cpu().numpy()

    def train_dataloader(self) -> ShuffledBatches:
        return ShuffledBatches(self.train_tensors, self.batch, seed=0, group=self.group)


def recarena_epoch(module: L.LightningModule, data: _Data, steps: int, device: torch.device,
                   precision: str = "32-true") -> float:  # fmt: skip
    """Seconds per epoch through Lightning: ``steps`` optimiser steps timed after one warm-up group, extrapolated."""
    groups = max(1, steps // data.group)
    timer = EpochTimer()
    trainer = L.Trainer(accelerator=device.type, devices=1, max_epochs=2, limit_train_batches=groups,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        precision=precision)  # fmt: skip
    trainer.fit(module, datamodule=data)  # epoch 1 warms up (kernels, the allocator, compiling); epoch 2 is timed
    per_epoch = -(-len(data.train_tensors["users"]) // data.batch)  # optimiser steps in a whole epoch
    return timer.epoch_seconds[-1] / min(groups * data.group, per_epoch) * per_epoch


def bare_epoch(model: torch.nn.Module, tensors: dict[str, torch.Tensor], batch: int, steps: int, device: torch.device) -> float:
    """Seconds per epoch of the bare loop: one permuted copy on the device, ``steps`` slices, extrapolated."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    n = len(tensors["users"])

    def run(count: int) -> float:
        order = torch.randperm(n, device=device)
        cols = {k: tensors[k].index_select(0, order) for k in model.columns}
        sync(device)
        started = time.perf_counter()
        for s in range(count):
            a = (s * batch) % max(n - batch, 1)
            optimizer.zero_grad(set_to_none=True)
            model.loss({k: column[a : a + batch] for k, column in cols.items()}).backward()
            optimizer.step()
        sync(device)
        return time.perf_counter() - started

    run(min(steps, 10))  # warm-up
    return run(steps) / steps * -(-n // batch)


def family(name: str, schema: Schema, **options) -> tuple[L.LightningModule, torch.nn.Module]:
    """``model=name loss=mse`` as configured in conf/ (its YAML's hyperparameters) through recarena, and the same
    maths as a bare module (:func:`bench.bare.bare_maths`), both on Adam at lr 0.005 unless ``options``
    says otherwise (``optimizer=``: another conf/optimizer/ option; ``compile_step``)."""
    cfg = compose(f"model={name}", "loss=mse", "optimizer.lr=0.005", *options.pop("overrides", []))
    module = instantiate(cfg.model, schema=schema, loss=MSELoss(), optimizer=instantiate(cfg.optimizer),
                         _convert_="all", **options)  # fmt: skip
    return module, bare_maths(cfg, schema)


def pipeline_epoch(args: argparse.Namespace, family_name: str, device: torch.device) -> tuple[float, int]:
    """Seconds per epoch of ``family=family_name`` through train.py's own pipeline (synthetic data of ``--ratings``
    generated, split and viewed as a run does, then :func:`bench.throughput.recarena_side`: ``--pipeline-seconds``
    of training, extrapolated to an epoch), and the epoch's rows."""
    overrides = ["data=synthetic", f"data.n_ratings={args.ratings}", f"data.n_users={args.users}",
                 f"data.n_items={args.items}", "split=random", f"family={family_name}"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(overrides, Path(tmp), trainer="gpu" if device.type == "cuda" else "cpu")
        dm = datamodule(cfg)
        rate = recarena_side(cfg, dm, args.pipeline_seconds, Path(tmp))
    return dm.n_train / rate, dm.n_train


def row(what: str, ours: float, bare: float | None = None) -> None:
    tail = f"{bare:>9.2f}s {bare / ours:>6.2f}x" if bare is not None else f"{'':>10} {'':>7}"
    print(f"{what:<56} {ours:>9.2f}s {tail}", flush=True)


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ratings", type=int, default=25_000_095)
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=62_423)
    parser.add_argument("--eval-users", type=int, default=160_000)
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps timed per side and batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 65536])
    parser.add_argument("--compile", default=None,
                        help="compile= mode of the compiled MF rows (default: reduce-overhead on a GPU; none skips)")
    parser.add_argument("--pipeline-seconds", type=float, default=10.0,
                        help="training seconds of each family timed through train.py's pipeline")
    args = parser.parse_args()
    device = torch.device(args.device)
    compile_mode = args.compile or ("reduce-overhead" if device.type == "cuda" else "none")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tensors = ratings_on(device, args.ratings, args.users, args.items)
    schema = Schema(n_users=args.users, n_items=args.items, rating_low=0.5, rating_high=5.0, global_mean=3.0)
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; {args.ratings:,} ratings, "
          f"{args.users:,} users x {args.items:,} items; times extrapolated to one epoch from {args.steps} steps")
    print(f"{'what':<56} {'recarena':>10} {'bare':>10} {'ratio':>7}")

    def both(what: str, name: str, batch: int, precision: str = "32-true", **options) -> None:
        torch.manual_seed(0)
        ours, bare = family(name, schema, **options)
        ours_s = recarena_epoch(ours, _Data(tensors, schema, batch, group=8), args.steps, device, precision)
        row(what, ours_s, bare_epoch(bare.to(device), tensors, batch, args.steps, device))

    for batch in args.batch_sizes:
        both(f"MF epoch, batch {batch:,}", "mf", batch)
        if compile_mode != "none":
            both(f"MF epoch, batch {batch:,}, compile={compile_mode}", "mf", batch, compile_step=compile_mode)
    big = max(args.batch_sizes)
    both(f"MF epoch, batch {big:,}, optimizer=sparse_adam", "mf", big, overrides=["optimizer=sparse_adam"])
    if device.type == "cuda":
        both(f"MF epoch, batch {big:,}, bf16-mixed", "mf", big, precision="bf16-mixed")
    both(f"MLP epoch, batch {big:,}", "mlp", big)
    tensors.clear()  # the device memory goes to the evaluation below
    for name in ("twotower_logq", "mlp"):
        seconds, rows = pipeline_epoch(args, name, device)
        row(f"{name} epoch, {rows:,} rows, through train.py's pipeline", seconds)
    data = {k: v.to(device) for k, v in synthetic(args.eval_users, args.items, 150, 10, 50, seed=0).items()}
    ours_s, ours_hits = our_ranking(data, 2048)
    bare_s, bare_hits = bare_ranking(data, 2048)
    assert ours_hits == bare_hits, (ours_hits, bare_hits)
    row(f"top-20, {args.eval_users:,} x {args.items:,}", ours_s, bare_s)
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print("ratio: bare time / recarena time (1.00 = as fast as the bare loop; above 1, faster)")


if __name__ == "__main__":
    main()
