"""The compare_families sweep as it stood when issue 12 was filed (f904b75), through today's code, beside f904b75's.

The issue timed ``python train.py -m experiment=compare_families`` on ML-100K at f904b75 (8 family presets x 3
seeds, 24 runs, 1 thread: 286 s on its machine) and asked for that sweep under 180 s on 2 cores without changing
any metric. Today's conf/family/ presets are another workload (tuned on validation, 200-epoch budgets), so
``bench/filed_sweep/family/`` keeps f904b75's 8 presets as its runs resolved them (batch 1024, 20 epochs,
patience 3, ...) and this script runs them:

- after: today's ``train.py -m`` over those presets and seeds 42-44, ``hydra/launcher=parallel`` (one job per core,
  each with its share of the threads);
- before (``--before CHECKOUT``): f904b75's own ``train.py -m experiment=compare_families`` in a checkout of it, as
  the issue ran it (serial, ``--before-threads`` threads), with the same interpreter;

then prints both walls, each family's job seconds, and every validation and test metric of the two sweeps compared
run by run (``--before-dir`` compares with a finished before sweep instead of running one).

    git worktree add --detach ../f904b75 f904b75
    python bench/filed_sweep.py --before ../f904b75
    python bench/filed_sweep.py --before-dir /tmp/f904b75-sweep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = Path(__file__).resolve().parent / "filed_sweep"
PREFIX = "f904b75_"


def families() -> list[str]:
    """The filed presets, by their file names in ``bench/filed_sweep/family/``."""
    return sorted(path.stem for path in (PRESETS / "family").glob(f"{PREFIX}*.yaml"))


def after_command(out: Path, seeds: list[int], jobs: int) -> list[str]:
    """Today's ``train.py -m`` over the filed presets, jobs in parallel on the cores."""
    return [sys.executable, str(REPO / "train.py"), "-m", f"hydra.searchpath=[file://{PRESETS}]",
            f"family={','.join(families())}", f"seed={','.join(map(str, seeds))}",
            "hydra/launcher=parallel", f"hydra.launcher.n_jobs={jobs}", f"hydra.sweep.dir={out}"]  # fmt: skip


def before_command(checkout: Path, out: Path) -> list[str]:
    """f904b75's own sweep, as the issue ran it."""
    return [sys.executable, str(checkout / "train.py"), "-m", "experiment=compare_families", f"hydra.sweep.dir={out}"]


def run_sweep(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Wall seconds of one sweep; its output goes to ``log``, and a failed sweep stops the bench."""
    started = time.perf_counter()
    with log.open("w") as stream:
        proc = subprocess.run(command, cwd=cwd, env=env, stdout=stream, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"error: the sweep failed (exit {proc.returncode}); its output is in {log}")
    return seconds


def read_sweep(root: Path) -> dict[tuple[str, int], dict]:
    """``{(family, seed): metrics.json}`` for every run of a sweep dir; families without the preset prefix."""
    runs = {}
    for path in root.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        family = next(o.split("=", 1)[1] for o in metrics["overrides"] if o.startswith("family="))
        runs[(family.removeprefix(PREFIX), int(metrics["seed"]))] = metrics
    return runs


def compare(before: dict[tuple[str, int], dict], after: dict[tuple[str, int], dict]) -> dict[str, dict]:
    """Per family: how many validation and test metrics are identical and how many differ (and by how much at
    most), over the runs both sweeps have, with each sweep's job seconds and epochs."""
    rows: dict[str, dict] = defaultdict(lambda: {"same": 0, "differ": 0, "max_diff": 0.0, "runs": 0,
                                                 "before_s": 0.0, "after_s": 0.0, "epochs": [[], []]})  # fmt: skip
    for key in sorted(before.keys() & after.keys()):
        row, old, new = rows[key[0]], before[key], after[key]
        row["runs"] += 1
        row["before_s"] += old.get("wall_seconds") or 0.0
        row["after_s"] += new.get("wall_seconds") or 0.0
        row["epochs"][0].append(old.get("epochs"))
        row["epochs"][1].append(new.get("epochs"))
        for part in ("val", "test"):
            for name, value in old[part].items():
                if name not in new[part]:
                    continue
                same = value == new[part][name]
                row["same" if same else "differ"] += 1
                if not same:
                    row["max_diff"] = max(row["max_diff"], abs(value - new[part][name]))
    return dict(rows)


def print_comparison(rows: dict[str, dict]) -> None:
    print(f"{'family':<18} {'runs':>4} {'identical':>9} {'differ':>6} {'max |diff|':>10} "
          f"{'job s before':>12} {'job s after':>11}  epochs before -> after")  # fmt: skip
    for family, row in sorted(rows.items()):
        print(f"{family:<18} {row['runs']:>4} {row['same']:>9} {row['differ']:>6} {row['max_diff']:>10.2e} "
              f"{row['before_s']:>12.1f} {row['after_s']:>11.1f}  {row['epochs'][0]} -> {row['epochs'][1]}")  # fmt: skip
    same, differ = sum(r["same"] for r in rows.values()), sum(r["differ"] for r in rows.values())
    print(f"all: {same:,} of {same + differ:,} metrics identical")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of f904b75: run its sweep first, serially")
    parser.add_argument("--before-dir", type=Path, help="a finished sweep dir of f904b75's to compare with")
    parser.add_argument("--before-threads", type=int, default=1, help="threads of the before sweep (the issue: 1)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="jobs at once in today's sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, help="where the sweeps go (default: a temporary dir)")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    out = args.out or Path(tempfile.mkdtemp(prefix="filed-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; {len(families())} filed presets x {len(args.seeds)} seeds; sweeps under {out}")
    before_dir, before_s = args.before_dir, None
    if args.before is not None:
        before_dir = out / "before"
        env = {**os.environ, "PYTHONPATH": str(args.before.resolve() / "src"),
               "OMP_NUM_THREADS": str(args.before_threads)}  # fmt: skip
        before_s = run_sweep(before_command(args.before.resolve(), before_dir), args.before, env, out / "before.log")
        print(f"before: f904b75's sweep, serial, {args.before_threads} thread(s): {before_s:.1f} s")
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    after_s = run_sweep(after_command(out / "after", args.seeds, args.jobs), REPO, env, out / "after.log")
    ratio = f", {before_s / after_s:.2f}x faster" if before_s else ""
    print(f"after: today's code, the same presets, {args.jobs} jobs at once (threads: auto): {after_s:.1f} s{ratio}")
    if before_dir is not None:
        print_comparison(compare(read_sweep(before_dir), read_sweep(out / "after")))


if __name__ == "__main__":
    main()
