"""The compare_families sweep as it stood when issue 12 was filed (f904b75), through today's code, beside f904b75's.

The issue timed ``python train.py -m experiment=compare_families`` on ML-100K at f904b75 (8 family presets x 3
seeds, 24 runs, 1 thread: 286 s on its machine) and asked for the sweep under 180 s on 2 cores without changing
any metric. Today's conf/family/ presets are another workload (tuned on validation, 200-epoch budgets), so
``bench/filed_sweep_conf/family/`` keeps f904b75's 8 presets as its runs resolved them (batch 1024, 20 epochs,
patience 3, ...) and this script runs them:

- after: this checkout's ``train.py -m`` over those presets, ``hydra/launcher=parallel`` (``--jobs`` at once, each
  with its share of the cores through ``threads: auto``);
- before (``--before CHECKOUT``): f904b75's own ``train.py -m experiment=compare_families`` in a checkout of it, as
  the issue ran it (serial, ``--before-threads`` threads), with the same interpreter and the same seeds;

then prints both walls, the commit each sweep's runs recorded, each family's job seconds, and every validation and
test metric of the two sweeps compared run by run, naming those that differ (``--before-dir`` compares with a
finished before sweep instead of running one). It exits 1 when a run is in one sweep only (a sweep that did not
finish); a metric that one code reports and the other does not is listed, not an error.

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
from dataclasses import dataclass, field
from pathlib import Path

from recarena.threads import available_cores

REPO = Path(__file__).resolve().parents[1]
PRESETS = Path(__file__).resolve().parent / "filed_sweep_conf"
PREFIX = "f904b75_"


def families() -> list[str]:
    """The filed presets, by their file names in ``bench/filed_sweep_conf/family/``."""
    return sorted(path.stem for path in (PRESETS / "family").glob(f"{PREFIX}*.yaml"))


def after_command(out: Path, seeds: list[int], jobs: int) -> list[str]:
    """This checkout's ``train.py -m`` over the filed presets, jobs in parallel on the cores."""
    return [sys.executable, str(REPO / "train.py"), "-m", f"hydra.searchpath=[file://{PRESETS}]",
            f"family={','.join(families())}", f"seed={','.join(map(str, seeds))}",
            "hydra/launcher=parallel", f"hydra.launcher.n_jobs={jobs}", f"hydra.sweep.dir={out}"]  # fmt: skip


def before_command(checkout: Path, out: Path, seeds: list[int]) -> list[str]:
    """f904b75's own sweep, as the issue ran it (its experiment sweeps the same seeds by default)."""
    return [sys.executable, str(checkout / "train.py"), "-m", "experiment=compare_families",
            f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={out}"]  # fmt: skip


def code_env(checkout: Path, threads: int | None) -> dict[str, str]:
    """The environment that makes ``checkout``'s ``src`` the ``recarena`` a sweep imports (ahead of whatever the
    interpreter has installed), with ``OMP_NUM_THREADS`` set to ``threads`` or left to ``threads: auto``."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout / "src"), os.environ.get("PYTHONPATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


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


@dataclass
class FamilyComparison:
    """One family's runs in both sweeps: metrics identical, differing (by name, with the largest relative
    difference), only in one sweep, and each sweep's job seconds and epochs."""

    runs: int = 0
    same: int = 0
    differing: int = 0
    differ: dict[str, float] = field(default_factory=dict)  # metric -> max |after - before| / |before|
    only_before: set[str] = field(default_factory=set)
    only_after: set[str] = field(default_factory=set)
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0])  # before, after
    epochs: tuple[list, list] = field(default_factory=lambda: ([], []))  # before, after

    def add(self, before: dict, after: dict) -> None:
        self.runs += 1
        for side, metrics in enumerate((before, after)):
            self.seconds[side] += metrics.get("wall_seconds") or 0.0
            self.epochs[side].append(metrics.get("epochs"))
        for part in ("val", "test"):
            old, new = before[part], after[part]
            self.only_before |= old.keys() - new.keys()
            self.only_after |= new.keys() - old.keys()
            for name in old.keys() & new.keys():
                if old[name] == new[name]:
                    self.same += 1
                else:
                    self.differing += 1
                    change = abs(new[name] - old[name]) / max(abs(old[name]), 1e-12)
                    self.differ[name] = max(self.differ.get(name, 0.0), change)


def compare(before: dict[tuple[str, int], dict], after: dict[tuple[str, int], dict]) -> dict[str, FamilyComparison]:
    """Per family, the runs both sweeps have compared metric by metric."""
    rows: dict[str, FamilyComparison] = {}
    for key in sorted(before.keys() & after.keys()):
        rows.setdefault(key[0], FamilyComparison()).add(before[key], after[key])
    return rows


def print_comparison(rows: dict[str, FamilyComparison]) -> None:
    """One line per family and a total, then the metrics that differ or that only one sweep reports."""
    print(f"{'family':<18} {'runs':>4} {'identical':>9} {'differ':>6} {'job s before':>12} {'job s after':>11}"
          "  epochs before -> after")  # fmt: skip
    for family, row in sorted(rows.items()):
        print(f"{family:<18} {row.runs:>4} {row.same:>9} {row.differing:>6} {row.seconds[0]:>12.1f} {row.seconds[1]:>11.1f}"
              f"  {row.epochs[0]} -> {row.epochs[1]}")  # fmt: skip
    seconds = [sum(row.seconds[side] for row in rows.values()) for side in (0, 1)]
    print(f"{'all':<18} {sum(r.runs for r in rows.values()):>4} {'':>9} {'':>6} {seconds[0]:>12.1f} {seconds[1]:>11.1f}")
    for family, row in sorted(rows.items()):
        for name, change in sorted(row.differ.items()):
            print(f"  {family}: {name} differs, by up to {change:.2e} of its value")
        for name in sorted(row.only_before):
            print(f"  {family}: {name} only before")
        for name in sorted(row.only_after):
            print(f"  {family}: {name} only after")


def count_metrics(runs: dict[tuple[str, int], dict]) -> int:
    return sum(len(metrics["val"]) + len(metrics["test"]) for metrics in runs.values())


def report(before: dict[tuple[str, int], dict], after: dict[tuple[str, int], dict]) -> bool:
    """Print the comparison; True when both sweeps have the same runs."""
    rows = compare(before, after)
    print_comparison(rows)
    identical = sum(row.same for row in rows.values())
    print(f"{identical:,} of the before sweep's {count_metrics(before):,} metrics identical in the after sweep")
    commits = [sorted({str(m.get("git_commit"))[:7] for m in runs.values()}) for runs in (before, after)]
    print(f"commits the runs recorded: before {commits[0]}, after {commits[1]}")
    unmatched = before.keys() ^ after.keys()
    for family, seed in sorted(unmatched):
        print(f"error: {family} seed {seed} ran in only one sweep")
    return not unmatched


def arguments() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    before = parser.add_mutually_exclusive_group()
    before.add_argument("--before", type=Path, help="a checkout of f904b75: run its sweep first, serially")
    before.add_argument("--before-dir", type=Path, help="a finished sweep dir of f904b75's to compare with")
    parser.add_argument("--before-threads", type=int, default=1, help="threads of the before sweep (the issue: 1)")
    parser.add_argument("--jobs", type=int, default=available_cores(), help="jobs at once in today's sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="seeds of both sweeps")
    parser.add_argument("--out", type=Path, help="an empty or new dir for the sweeps (default: a temporary dir)")
    return parser.parse_args()


def fresh_dir(path: Path | None) -> Path:
    """``path`` made absolute (the sweeps run from other dirs) and empty, or a new temporary dir."""
    out = (path or Path(tempfile.mkdtemp(prefix="filed-sweep-"))).resolve()
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: --out {out} is not empty; a sweep there would mix with the runs it holds")
    out.mkdir(parents=True, exist_ok=True)
    return out


def main() -> None:
    """Run the before sweep (if asked), then the after sweep, and compare them."""
    args = arguments()
    out = fresh_dir(args.out)
    print(f"{available_cores()} cores; {len(families())} filed presets x {len(args.seeds)} seeds; sweeps under {out}")
    before_dir, before_s = args.before_dir, None
    if args.before is not None:
        checkout, before_dir = args.before.resolve(), out / "before"
        before_s = run_sweep(before_command(checkout, before_dir, args.seeds), checkout,
                             code_env(checkout, args.before_threads), out / "before.log")  # fmt: skip
        print(f"before: f904b75's sweep, serial, {args.before_threads} thread(s): {before_s:.1f} s")
    after_s = run_sweep(after_command(out / "after", args.seeds, args.jobs), REPO, code_env(REPO, None),
                        out / "after.log")  # fmt: skip
    ratio = f", {before_s / after_s:.2f}x faster" if before_s else ""
    print(f"after: this checkout, the same presets, {args.jobs} jobs at once (threads: auto): {after_s:.1f} s{ratio}")
    if before_dir is not None and not report(read_sweep(before_dir), read_sweep(out / "after")):
        sys.exit(1)


if __name__ == "__main__":
    main()
