"""Full-catalogue evaluation speed: every ML-100K user with held-out ratings, every item scored, on the CPU.

Times the shared evaluator as a run uses it (Lightning's test loop over user chunks, RMSE/MAE and every ranking
metric at K = 10, 20) for an MF model, best of ``--repeats``. Target: under 1 s.

    python bench/evaluation.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from recarena.build import (
    build_datamodule,
    build_model,
    build_trainer,
    compose,
)
from recarena.timing import EpochTimer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(f"data={args.data}", "model=mf", "trainer=cpu", "trainer.enable_progress_bar=false", "~logger",
                      "~callbacks", "verbose=false", output_dir=Path(tmp))  # fmt: skip
        dm = build_datamodule(cfg, "pairs")
        dm.prepare_data()
        dm.setup("fit")
        model = build_model(cfg, dm)
        trainer = build_trainer(cfg, Path(tmp), EpochTimer())
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            trainer.test(model, datamodule=dm, verbose=False)
            times.append(time.perf_counter() - started)
    print(f"{args.data}: full-catalogue test evaluation of {dm.test_data.n_users_eval:,} users x "
          f"{dm.schema.n_items:,} items ({torch.get_num_threads()} threads): best {min(times):.3f} s, "
          f"median {sorted(times)[len(times) // 2]:.3f} s over {args.repeats} runs")


if __name__ == "__main__":
    main()
