"""bench/throughput.py keeps to its time budget: each side trains for about ``--seconds`` per configuration and
stops mid-epoch when its time is up, so a large dataset costs fewer steps, not more time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench(args: list[str]) -> subprocess.CompletedProcess:
    """bench/throughput.py at 1 thread; it must succeed."""
    env = {**os.environ, "BENCH_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), *args], capture_output=True,
                          text=True, timeout=300, check=False, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_the_throughput_bench_keeps_to_its_budget_on_data_far_larger_than_it() -> None:
    # 2M ratings with the MLP at 1 thread: an epoch takes minutes, far more than the 0.5 s each side may train.
    args = ["--n-ratings", "2000000", "--seconds", "0.5", "--rounds", "1", "--batch-sizes", "512", "--model", "mlp",
            "--skip-ml100k"]  # fmt: skip
    proc = _bench(args)
    row = re.search(r"batch 512 +bare maths +([\d,]+) samples/s \| recarena +([\d,]+) samples/s \| ratio ([\d.]+)",
                    proc.stdout)  # fmt: skip
    assert row, proc.stdout
    assert all(float(value.replace(",", "")) > 0 for value in row.groups())
    whole = float(re.search(r"whole run: ([\d.]+) s", proc.stdout).group(1))
    assert whole < 60, proc.stdout  # 2 x 0.5 s of training, the data built once, the probes and fits started


def test_mf_with_bpr_is_measured_against_bare_bpr_maths() -> None:
    args = ["--families", "mf_bpr", "--n-ratings", "50000", "--seconds", "0.5", "--rounds", "1"]
    proc = _bench(args)
    assert re.search(r"family=mf_bpr +bare maths .* ratio [\d.]+", proc.stdout), proc.stdout
