"""bench/throughput.py keeps to its time budget: each side trains for about ``--seconds`` per configuration and
stops mid-epoch when its time is up, so a large dataset costs fewer steps, not more time. And its bare side is
the family's own maths where one is written (MF under BPR here, the MLP under MSE)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_throughput_bench_keeps_to_its_budget_on_data_far_larger_than_it() -> None:
    # 1M ratings at 1 thread: an MLP epoch takes minutes, an mf_bpr epoch (16 negatives, 256 factors) longer, far
    # more than the 0.5 s each side may train.
    args = ["--families", "mlp", "mf_bpr", "--n-ratings", "1000000", "--seconds", "0.5", "--rounds", "1"]
    env = {**os.environ, "BENCH_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), *args], capture_output=True,
                          text=True, timeout=300, check=False, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for family in ("mlp", "mf_bpr"):
        row = re.search(rf"family={family} +bare maths +([\d,]+) samples/s \| recarena +([\d,]+) samples/s \| "
                        r"ratio ([\d.]+)", proc.stdout)  # fmt: skip
        assert row, (family, proc.stdout)
        assert all(float(value.replace(",", "")) > 0 for value in row.groups())
    whole = float(re.search(r"whole run: ([\d.]+) s", proc.stdout).group(1))
    assert whole < 60, proc.stdout  # 2 families x 2 sides x 0.5 s of training, their data, the probes and fits
