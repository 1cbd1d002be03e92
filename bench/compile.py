"""Eager against ``compile=`` training, one process: the seconds of each epoch through Lightning and the real
datamodule, the first epoch (where the compiled side compiles) shown apart.

    python bench/compile.py                                   # MF on ML-100K, compile=true, 2 threads
    python bench/compile.py --mode reduce-overhead --epochs 4 -- data=synthetic data.n_ratings=2000000 \\
        data.n_users=20000 data.n_items=5000
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

try:  # run as a script from the repository (python bench/compile.py) or as a module (python -m bench.compile)
    from throughput import _fit, config, datamodule
except ImportError:
    from bench.throughput import _fit, config, datamodule


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="true", help="the compile= option to compare with eager")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly when measuring)")
    parser.add_argument("overrides", nargs="*", default=["data=ml-100k", "model=mf"], help="config overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{' '.join(args.overrides)}; {args.threads} threads; seconds of each training epoch")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config([*args.overrides, "compile=false"], Path(tmp))
        dm = datamodule(cfg)  # one datamodule: both sides train on the same view
        for mode in ("false", args.mode):
            timer = _fit(config([*args.overrides, f"compile={mode}"], Path(tmp)), dm, args.epochs, 10**9, Path(tmp))
            first, *rest = timer.epoch_seconds
            print(f"compile={mode:<16} first {first:7.3f} s | then {' '.join(f'{s:.3f}' for s in rest)} | "
                  f"median {sorted(rest)[len(rest) // 2]:.3f} s", flush=True)


if __name__ == "__main__":
    main()
