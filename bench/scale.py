"""Scale: a MovieLens-25M-sized synthetic release through the whole pipeline, on this machine's CPU.

Printed, each measured in this run: generation time, parse + cache time, cached load time, split time, one MF
epoch (``optimizer=sparse_adam``: only the rows a batch touches are updated, checked and printed) beside one epoch
of the same maths as a bare loop, full-catalogue test evaluation of every test user beside a bare matmul + -inf +
top-20 over the same chunks (targets: recarena >= 0.85x of each), and the peak resident memory of the process.
Targets on a 2-core machine: cached load < 10 s, peak RSS < 8 GB.

    python bench/scale.py                          # 25M ratings, 160k users, 60k items
    python bench/scale.py --n-ratings 2000000      # a quicker look
    python bench/scale.py --mining --mining-only   # also time model=siamese's triplet mining, then stop
    python bench/scale.py --twotower --twotower-only   # time model=twotower's feature tables and a step, then stop
    python bench/scale.py --mlp-eval 20000 --mlp-eval-only   # model=mlp's full-catalogue test on a 20k-user sample
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from recarena import paths
from recarena.build import (
    build_datamodule,
    build_model,
    build_trainer,
    compose,
)
from recarena.data.datamodule import MovieLensDataModule
from recarena.data.sources import load_corpus
from recarena.data.synthetic import ensure_synthetic
from recarena.models.layers import rating_range
from recarena.timing import EpochTimer

try:  # run as a script from the repository (python bench/scale.py) or as a module (python -m bench.scale)
    from bare import BareMF
except ImportError:
    from bench.bare import BareMF


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def timed(label: str, fn):
    started = time.perf_counter()
    value = fn()
    print(f"{label:<34} {time.perf_counter() - started:8.2f} s   (peak RSS so far {peak_rss_gb():.2f} GB)", flush=True)
    return value


def rows_updated_by_one_step(cfg: DictConfig, dm: MovieLensDataModule) -> tuple[int, int]:
    """Train one mini-batch and count the item-factor rows that changed (sparse updates touch only the batch's)."""
    model = build_model(cfg, dm)
    trainer = build_trainer(cfg, Path(tempfile.mkdtemp()), EpochTimer())
    trainer.fit_loop.max_epochs = 1
    trainer.limit_train_batches = 1
    before = model.item_factors.weight.detach().clone()
    dm.minibatches_per_step, saved = 1, dm.minibatches_per_step
    trainer.fit(model, datamodule=dm)
    dm.minibatches_per_step = saved
    changed = (model.item_factors.weight.detach() != before).any(dim=1)
    return int(changed.sum()), len(changed)


def time_mining(dm: MovieLensDataModule) -> None:
    """model=siamese's descriptors, co-likes and triplet mining (its defaults) on the training part of the split."""
    from recarena.data.triplets import MiningOptions, item_descriptors, liked_by, mine_triplets

    opts, threshold = MiningOptions(), OmegaConf.load(paths.CONF_DIR / "loss" / "triplet.yaml").positive_threshold
    x, _ = timed("siamese: item descriptors", lambda: item_descriptors(dm.corpus, opts.genome_k, opts.tags_k))
    liked = timed("siamese: co-like matrix", lambda: liked_by(dm.corpus, dm.split.train, threshold, opts.user_cap))
    triplets = timed(f"siamese: mining ({opts.positives})", lambda: mine_triplets(
        x, liked, opts.content_per_anchor, opts.ratings_per_anchor, opts.negatives, seed=0))
    print(f"  {x.shape[0]:,} items, {x.shape[1]:,} descriptors, {liked.nnz:,} likes, {len(triplets):,} triplets")


def time_twotower(dm: MovieLensDataModule, batch_size: int) -> None:
    """model=twotower's time-ordered context tables (its defaults) and one training step on a batch."""
    import numpy as np

    from recarena.data.features import build_context_arrays, item_features
    from recarena.losses import MSELoss
    from recarena.models.twotower import TwoTower

    split = dm.split
    arrays = timed("twotower: context tables", lambda: build_context_arrays(dm.corpus, split.train, split.known, 250, 3.0))
    timed("twotower: item features", lambda: item_features(dm.corpus, ["genres", "year", "tags"], 50))
    mib = sum(v.nbytes for v in vars(arrays).values() if isinstance(v, np.ndarray)) / 2**20
    print(f"  {len(arrays.items):,} input ratings, {len(arrays.snap):,} snapshots, {len(arrays.ctx_flat):,} "
          f"context-item ratings, {len(arrays.pos_flat):,} positives: {mib:,.0f} MiB of tables")
    model = TwoTower(dm.schema, MSELoss())
    timed("twotower: features into the model", lambda: model.build_features(dm.corpus, split))
    rows = np.random.default_rng(0).choice(split.train, min(batch_size, len(split.train)), replace=False)
    c = dm.corpus
    batch = {"users": torch.as_tensor(c.users[rows]).long(), "items": torch.as_tensor(c.items[rows]).long(),
             "ratings": torch.as_tensor(c.ratings[rows]), "rows": torch.as_tensor(rows)}
    timed(f"twotower: forward + backward (batch {len(rows)})", lambda: model.loss_fn(model, batch).backward())


def time_mlp_eval(overrides: list[str], out: Path, max_users: int) -> None:
    """model=mlp's full-catalogue test evaluation (the MLP over every user x item) on ``eval.max_users`` users;
    the weights are untrained: the cost does not depend on them."""
    cfg = compose(*overrides, "model=mlp", "optimizer=adam", f"eval.max_users={max_users}", output_dir=out)
    dm = build_datamodule(cfg, "pairs")
    dm.setup("fit")
    model = build_model(cfg, dm)
    trainer = build_trainer(cfg, out, EpochTimer())
    timed(f"mlp: test evaluation ({max_users:,} users)", lambda: trainer.test(model, datamodule=dm, verbose=False))
    scored, everyone = dm.test_data.n_users_eval, dm.test_data.n_users_all
    print(f"  {scored:,} of {everyone:,} test users scored against all {dm.schema.n_items:,} items")


def bare_mf_epoch(cfg: DictConfig, dm: MovieLensDataModule) -> float:
    """Seconds of one epoch of the same MF maths as a bare loop (:class:`bench.bare.BareMF` with sparse
    embedding gradients and torch's SparseAdam, as ``optimizer=sparse_adam`` updates MF) over the same view."""
    m = cfg.model
    model = BareMF(dm.schema.n_users, dm.schema.n_items, int(m.n_factors), float(m.init_std),
                   rating_range(m.y_range, dm.schema.rating_low, dm.schema.rating_high), float(m.l2), sparse=True)  # fmt: skip
    optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=float(cfg.optimizer.lr))
    columns, batch = dm.train_tensors, int(cfg.batch_size)
    started = time.perf_counter()
    order = torch.randperm(dm.n_train)
    permuted = {name: columns[name][order] for name in model.columns}
    for a in range(0, dm.n_train, batch):
        optimizer.zero_grad(set_to_none=True)
        model.loss({name: column[a : a + batch] for name, column in permuted.items()}).backward()
        optimizer.step()
    return time.perf_counter() - started


def bare_evaluation(model: torch.nn.Module, dm: MovieLensDataModule, threshold: float) -> tuple[float, int]:
    """Seconds of the least a full-catalogue top-20 evaluation of the same test users does, and its hits: per chunk
    of the evaluator's own batches, the model's user vectors times every item vector, -inf on the seen items,
    topk, relevant held-out items (rated >= ``threshold``) in it."""
    users_v, items_v = model.user_embeddings(), model.item_embeddings()
    started, hits = time.perf_counter(), 0
    with torch.no_grad():
        for b in dm.test_data.batches(int(dm.user_chunk)):
            scores = users_v[b["users"]] @ items_v.T
            scores[b["excl_row"], b["excl_item"]] = float("-inf")
            top = scores.topk(20, dim=1).indices
            relevant = b["held_rating"] >= threshold
            rows, items = b["held_row"][relevant], b["held_item"][relevant]
            hits += int((top[rows] == items[:, None]).any(-1).sum())
    return time.perf_counter() - started, hits


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-ratings", type=int, default=25_000_000)
    parser.add_argument("--n-users", type=int, default=160_000)
    parser.add_argument("--n-items", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--split", default="temporal")
    parser.add_argument("--mining", action="store_true", help="also time model=siamese's triplet mining")
    parser.add_argument("--mining-only", action="store_true", help="with --mining: stop after it (no MF epoch)")
    parser.add_argument("--twotower", action="store_true", help="also time model=twotower's features and a step")
    parser.add_argument("--twotower-only", action="store_true", help="with --twotower: stop after it")
    parser.add_argument("--mlp-eval", type=int, default=0, metavar="USERS",
                        help="also time model=mlp's test evaluation on a sample of this many users (eval.max_users)")
    parser.add_argument("--mlp-eval-only", action="store_true", help="with --mlp-eval: stop after it")
    return parser.parse_args()


def run_overrides(args: argparse.Namespace, cache: str) -> list[str]:
    """One MF epoch with sparse_adam over the synthetic set, training steps only (no validation, no logger)."""
    return [
        "data=synthetic", f"data.n_ratings={args.n_ratings}", f"data.n_users={args.n_users}",
        f"data.n_items={args.n_items}", f"data.cache_dir={cache}", f"split={args.split}", "model=mf",
        "optimizer=sparse_adam", f"batch_size={args.batch_size}", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "~logger", "~callbacks", "+trainer.limit_val_batches=0",
        "+trainer.enable_checkpointing=false", "verbose=false",
    ]  # fmt: skip


def time_loading(args: argparse.Namespace, cfg: DictConfig, cache: str) -> MovieLensDataModule:
    """Generation, parsing, the cached load and the datamodule's setup; returns the set-up datamodule."""
    timed("generate (CSV, ml-latest layout)", lambda: ensure_synthetic(
        Path(cache) / "synthetic", args.n_users, args.n_items, args.n_ratings, with_tags=True, generator_seed=0))
    timed("parse + cache", lambda: load_corpus(cfg.data))
    corpus = timed("cached load", lambda: load_corpus(cfg.data))
    print(f"  corpus: {corpus.n_users:,} users, {corpus.n_items:,} items, {corpus.n_ratings:,} ratings")
    del corpus
    dm = build_datamodule(cfg, "pairs")
    timed("curate + split + views (first run)", lambda: dm.setup("fit"))
    timed("curate + split + views (cached)", lambda: build_datamodule(cfg, "pairs").setup("fit"))
    return dm


def time_other_families(args: argparse.Namespace, dm: MovieLensDataModule, overrides: list[str], cache: str) -> bool:
    """The optional two-tower, mining and MLP-evaluation timings; True when an ``--*-only`` flag ends the run."""
    phases = (
        (args.twotower, args.twotower_only, lambda: time_twotower(dm, args.batch_size)),
        (args.mining, args.mining_only, lambda: time_mining(dm)),
        (args.mlp_eval, args.mlp_eval_only, lambda: time_mlp_eval(overrides, Path(cache) / "run", args.mlp_eval)),
    )
    for wanted, only, phase in phases:
        if wanted:
            phase()
            if only:
                return True
    return False


def time_mf_and_evaluation(cfg: DictConfig, dm: MovieLensDataModule, cache: str) -> None:
    """One MF epoch and the full-catalogue test evaluation, each beside its bare loop."""
    changed, total = rows_updated_by_one_step(cfg, dm)
    print(f"one sparse_adam step (batch {cfg.batch_size}) updated {changed:,} of {total:,} item rows")
    model = build_model(cfg, dm)
    timer = EpochTimer()
    trainer = build_trainer(cfg, Path(cache) / "run", timer)
    timed("one MF epoch (fit, no validation)", lambda: trainer.fit(model, datamodule=dm))
    print(f"  training only: {timer.train_seconds:.2f} s, {timer.samples_per_second(dm.n_train):,.0f} samples/s")
    bare = bare_mf_epoch(cfg, dm)
    print(f"  the same MF maths as a bare loop (SparseAdam): {bare:.2f} s, recarena at "
          f"{bare / timer.train_seconds:.2f}x of it", flush=True)
    started = time.perf_counter()
    result = timed("full-catalogue test evaluation", lambda: trainer.test(model, datamodule=dm, verbose=False))
    ours = time.perf_counter() - started
    bare, hits = bare_evaluation(model, dm, float(cfg.eval.relevance_threshold))
    print(f"  test users scored: {dm.test_data.n_users_eval:,}; ndcg@10 {result[0].get('test/ndcg@10', float('nan')):.4f}")
    print(f"  a bare matmul + -inf + top-20 over the same chunks: {bare:.2f} s ({hits:,} hits; recarena "
          f"{round(result[0]['test/precision@20'] * 20 * result[0]['test/users_ranked']):,}), recarena at "
          f"{bare / ours:.2f}x of it")


def main() -> None:
    args = arguments()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banners between the timed lines
    print(f"scale benchmark: {args.n_ratings:,} ratings, {args.n_users:,} users, {args.n_items:,} items; "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as cache:
        overrides = run_overrides(args, cache)
        cfg = compose(*overrides, output_dir=Path(cache) / "run")
        dm = time_loading(args, cfg, cache)
        if not time_other_families(args, dm, overrides, cache):
            time_mf_and_evaluation(cfg, dm, cache)
    print(f"peak RSS: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
