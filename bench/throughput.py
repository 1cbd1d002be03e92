"""Training throughput per family: recarena (Lightning + the real datamodule) against a bare PyTorch loop.

Both sides train the same maths (``--model``, with its default loss or ``--loss``) with the same optimiser on the
same tensors at the same batch size, in one process, alternated, each for about ``--seconds`` of training per
configuration (the data is built once per configuration; a side stops mid-epoch when its time is up, so a slow
family or a large ``--n-ratings`` costs no more time, only fewer steps).
For every family preset the bare side is the family's maths written in plain PyTorch (:mod:`bench.bare`: "bare
maths"), so the ratio shows the whole cost of recarena's module, loss, batches and Lightning. A ``--model`` /
``--loss`` pair bench/bare.py does not write out (e.g. ``loss=mns``) steps recarena's own module and loss by hand
instead ("module loop": ``model.attach(dm)``, then permute, slice, step): that ratio shows Lightning's and the
datamodule's share only.
Printed: samples/s of each side and their ratio (target >= 0.85), then epoch wall times on ML-100K at batch 64
and 1024.

    python bench/throughput.py                  # MF, 2M synthetic ratings, batches 1024 and 8192, 20 s per side
    python bench/throughput.py --seconds 5 --n-ratings 500000   # a quick look
    python bench/throughput.py --model twotower --loss logq --batch-sizes 1024   # another family / loss
    python bench/throughput.py --families     # every family preset at its own batch size
    python bench/throughput.py --families mf_bpr twotower_logq   # some of them
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import open_dict

from recarena.build import (
    build_datamodule,
    build_model,
    build_trainer,
    compose,
)
from recarena.checks import family_presets, group_targets
from recarena.timing import EpochTimer

try:  # run as a script from the repository (python bench/throughput.py) or as a module (python -m bench.throughput)
    from bare import bare_maths
except ImportError:
    from bench.bare import bare_maths


def config(overrides: list[str], out: Path, trainer: str = "cpu"):
    """The run's config without logger, callbacks, validation or checkpoints: training steps only. (Callbacks are
    emptied after composing: a family preset may set one's options, e.g. early stopping's patience.)"""
    cfg = compose(*overrides, f"trainer={trainer}", "trainer.enable_progress_bar=false", "~logger",
                  "+trainer.limit_val_batches=0", "+trainer.enable_checkpointing=false", "verbose=false", "test=false",
                  output_dir=out)  # fmt: skip
    with open_dict(cfg):
        cfg.callbacks = {}
    return cfg


def datamodule(cfg):
    """The datamodule ``train.py`` builds for this config (the loss picks the view), built once per config and
    shared by both sides and every round."""
    loss = instantiate(cfg.loss)
    dm = build_datamodule(cfg, loss.view, loss.positive_threshold)
    dm.prepare_data()
    dm.setup("fit")
    return dm


#: Lightning steps (groups of ``minibatches_per_step`` optimiser steps) of the probe fit that warms up and times a
#: step before the timed fit.
PROBE_STEPS = 4


def recarena_side(cfg, dm, seconds: float, out: Path) -> float:
    """Samples/s of training through Lightning with the real datamodule, over about ``seconds``: a short probe fit
    times a step, then one fit of as many steps as fill ``seconds`` is timed (part of an epoch, or whole epochs)."""
    probe = _fit(cfg, dm, epochs=1, steps=PROBE_STEPS, out=out)
    wanted = max(1, round(seconds / max(probe.train_seconds / PROBE_STEPS, 1e-6)))  # Lightning steps
    per_epoch = -(-dm.optimizer_steps(1) // int(cfg.minibatches_per_step))
    if wanted < per_epoch:
        timer = _fit(cfg, dm, epochs=1, steps=wanted, out=out)
        return min(wanted * int(cfg.minibatches_per_step) * int(cfg.batch_size), dm.n_train) / timer.train_seconds
    timer = _fit(cfg, dm, epochs=round(wanted / per_epoch), steps=per_epoch, out=out)
    return timer.samples_per_second(dm.n_train)


def _fit(cfg, dm, epochs: int, steps: int, out: Path) -> EpochTimer:
    """``epochs`` epochs of at most ``steps`` Lightning steps each (``limit_train_batches``)."""
    torch.manual_seed(0)
    model = build_model(cfg, dm)
    timer = EpochTimer()
    trainer = build_trainer(cfg, out, timer)
    trainer.fit_loop.max_epochs = epochs
    trainer.limit_train_batches = steps
    trainer.fit(model, datamodule=dm)
    return timer


def bare_side(cfg, dm, seconds: float) -> tuple[float, str]:
    """Samples/s of a hand-written loop (permute, slice, step) over about ``seconds``, after a few warm-up steps.
    Where :func:`bare_maths` has the family's maths it trains that on the view's columns it reads; otherwise it
    steps recarena's own module and loss (printed as "module loop": it measures Lightning's and the datamodule's
    share, not the module's own overhead). Returns samples/s and which of the two it was."""
    torch.manual_seed(0)
    tensors = dm.train_tensors
    model = bare_maths(cfg, dm.schema, dm)
    if model is not None:
        optimizer = instantiate(cfg.optimizer)(model.parameters())
        tensors = {name: tensors[name] for name in model.columns}
        loss = model.loss
    else:
        module = build_model(cfg, dm)
        module.attach(dm)  # what Lightning's setup does: loss statistics, feature tables, mined triplets
        optimizer = module.configure_optimizers()

        def loss(b: dict[str, torch.Tensor]) -> torch.Tensor:
            return module.loss_fn(module, b)

    def train(budget: float, max_steps: int | None = None) -> tuple[int, float]:
        """Steps until ``budget`` seconds (or ``max_steps``) have passed, a fresh permutation each epoch."""
        n, batch, samples = dm.n_train, int(cfg.batch_size), 0
        started, steps = time.perf_counter(), 0
        while True:
            order = torch.randperm(n)
            columns = {name: column[order] for name, column in tensors.items()}
            for start in range(0, n, batch):
                optimizer.zero_grad(set_to_none=True)
                loss({name: column[start : start + batch] for name, column in columns.items()}).backward()
                optimizer.step()
                samples, steps = samples + min(batch, n - start), steps + 1
                elapsed = time.perf_counter() - started
                if elapsed >= budget or steps == max_steps:
                    return samples, elapsed

    train(float("inf"), max_steps=PROBE_STEPS * int(cfg.minibatches_per_step))  # warm-up, as the probe fit
    samples, elapsed = train(seconds)
    return samples / elapsed, "module loop" if model is None else "bare maths"


#: ``--families``: every family preset of conf/family/ trained by gradient steps (the bare loop steps an optimiser).
FAMILIES = tuple(name for name, (_, loss) in family_presets().items()
                 if get_class(group_targets("loss")[loss]).trains_by_gradient)  # fmt: skip


def compare(label: str, overrides: list[str], seconds: float, rounds: int, out: Path) -> tuple[float, float, int]:
    """Both sides over the same datamodule, alternated in rounds so a slow spell of the machine hits both alike,
    each side ``seconds / rounds`` per round; prints the ratio of the mean rates and the median of the rounds' own
    ratios (each round is a pair measured back to back, so a slow spell that hits one side of one round moves the
    median less) and returns (recarena's samples/s, the bare loop's, the rows of an epoch)."""
    cfg = config(overrides, out)
    dm = datamodule(cfg)
    bare_rates, our_rates = [], []
    for _ in range(rounds):
        rate, kind = bare_side(cfg, dm, seconds / rounds)
        bare_rates.append(rate)
        our_rates.append(recarena_side(cfg, dm, seconds / rounds, out))
    bare, ours = sum(bare_rates) / rounds, sum(our_rates) / rounds
    round_ratios = [o / b for o, b in zip(our_rates, bare_rates, strict=True)]
    per_round = ", ".join(f"{r:.3f}" for r in round_ratios)
    print(f"{label:<28} {kind:<11} {bare:>11,.0f} samples/s | recarena {ours:>11,.0f} samples/s | "
          f"ratio {ours / bare:.3f}, median of rounds {statistics.median(round_ratios):.3f} (per round: {per_round})",
          flush=True)  # fmt: skip
    return ours, bare, dm.n_train


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners between rows
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="training seconds per side and configuration (split over the rounds)")
    parser.add_argument("--n-ratings", type=int, default=2_000_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--optimizer", default="adam", help="optimizer= option for both sides")
    parser.add_argument("--model", default="mf", help="model= option for both sides")
    parser.add_argument("--loss", default=None, help="loss= option for both sides (default: the family's)")
    parser.add_argument("--families", nargs="*", metavar="FAMILY",
                        help=f"these family presets (default: all of {', '.join(FAMILIES)}), each at its batch size")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two sides")
    parser.add_argument("--skip-ml100k", action="store_true", help="skip the ML-100K epoch times")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    started = time.perf_counter()

    n_users, n_items = max(1000, args.n_ratings // 100), max(500, args.n_ratings // 400)
    data = ["data=synthetic", f"data.n_ratings={args.n_ratings}", f"data.n_users={n_users}",
            f"data.n_items={n_items}", "split=random", f"optimizer={args.optimizer}"]
    chosen = [f"model={args.model}", *([f"loss={args.loss}"] if args.loss else [])]
    families = (args.families or list(FAMILIES)) if args.families is not None else []
    subject = "family presets" if families else " ".join(chosen)
    print(f"{subject} throughput on synthetic data: {args.n_ratings:,} ratings, {n_users:,} users, {n_items:,} "
          f"items; optimizer={args.optimizer}; {torch.get_num_threads()} threads; {args.seconds:g} s per side",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if families:
            ratios = {}
            for family in families:
                ours, bare, _ = compare(f"family={family}", [*data, f"family={family}"], args.seconds, args.rounds, out)
                ratios[family] = ours / bare
            print(f"lowest ratio: {min(ratios.values()):.3f} ({min(ratios, key=ratios.get)})")
        else:
            for batch in args.batch_sizes:
                compare(f"batch {batch}", [*data, *chosen, f"batch_size={batch}"], args.seconds, args.rounds, out)
        if not args.skip_ml100k and not families:
            for batch in (64, 1024):
                overrides = ["data=ml-100k", "split=random", *chosen, f"optimizer={args.optimizer}", f"batch_size={batch}"]
                ours, bare, n = compare(f"ML-100K batch {batch}", overrides, min(args.seconds, 10.0), args.rounds, out)
                print(f"ML-100K batch {batch:>5}: epoch {n / ours:.3f} s (recarena), {n / bare:.3f} s (bare loop)")
    print(f"whole run: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
