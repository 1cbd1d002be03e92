"""Using a trained run on ML-100K: the three figures of the "Use what was trained" issue, on the CPU.

1. ``recarena recommend RUN_DIR --user 196``, the whole command in a fresh process (Python start-up, imports,
   loading, printing the table): best of ``--repeats``. Target: under 3 s. Timed twice: as it runs, answered
   from the vectors training exported (``RUN_DIR/export``, numpy only: :mod:`recarena.serving`), and on a copy
   of the run dir without them, which loads the model (torch + Lightning).
2. ``run.recommend(user=196, k=10)`` once the run is loaded: median per call. Target: under 50 ms.
3. ``run.recommend(users=None, k=10)``, every user with training ratings: best of ``--repeats``. Target: under 2 s.

    python bench/inference.py [RUN_DIR]

Without RUN_DIR it trains MF (2 epochs, ML-100K, temporal split) into a temporary directory first; that training
is not timed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_mf(out: Path) -> Path:
    from recarena.build import compose
    from recarena.run import train

    overrides = ["data=ml-100k", "model=mf", "trainer=cpu", "trainer.max_epochs=2",
                 "trainer.enable_progress_bar=false", "verbose=false"]  # fmt: skip
    train(compose(*overrides, output_dir=out))
    return out


def command_seconds(run_dir: Path, user: int, repeats: int) -> list[float]:
    """Wall time of the whole ``recarena recommend`` command, each in a fresh interpreter."""
    recarena = Path(sys.executable).with_name("recarena")
    command = [str(recarena)] if recarena.exists() else [sys.executable, "-m", "recarena"]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([*command, "recommend", str(run_dir), "--user", str(user)], check=True,
                       stdout=subprocess.DEVNULL, env=os.environ)  # fmt: skip
        times.append(time.perf_counter() - started)
    return times


def without_export(run_dir: Path, tmp: Path) -> Path:
    """A copy of the run dir without ``export/``: the command then loads the model."""
    copy = tmp / "no-export"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path, help="a trained ML-100K run (default: train MF first)")
    parser.add_argument("--user", type=int, default=196)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or train_mf(Path(tmp) / "mf")
        cli = command_seconds(run_dir, args.user, args.repeats)
        model_path = command_seconds(without_export(run_dir, Path(tmp)), args.user, args.repeats)

        from recarena import load_run

        started = time.perf_counter()
        run = load_run(run_dir)
        load = time.perf_counter() - started
        run.recommend(user=args.user, k=10)  # warm-up
        one = []
        for _ in range(max(args.repeats, 20)):
            started = time.perf_counter()
            run.recommend(user=args.user, k=10)
            one.append(time.perf_counter() - started)
        every = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            frame = run.recommend(users=None, k=10)
            every.append(time.perf_counter() - started)
    import torch

    print(f"run: model={run.family}, {run.corpus.n_users:,} users x {run.corpus.n_items:,} items "
          f"({torch.get_num_threads()} torch threads); load_run {load:.3f} s")
    print(f"1. recarena recommend RUN_DIR --user {args.user} (whole command): best {min(cli):.2f} s, "
          f"median {statistics.median(cli):.2f} s over {len(cli)} runs (target < 3 s) from the exported vectors; "
          f"{min(model_path):.2f} s loading the model (a run dir without export/)")
    print(f"2. run.recommend(user={args.user}, k=10): median {1000 * statistics.median(one):.1f} ms, "
          f"best {1000 * min(one):.1f} ms over {len(one)} calls (target < 50 ms)")
    print(f"3. run.recommend(users=None, k=10), {frame['user_id'].nunique():,} users: best {min(every):.3f} s, "
          f"median {statistics.median(every):.3f} s over {len(every)} runs (target < 2 s)")


if __name__ == "__main__":
    main()
