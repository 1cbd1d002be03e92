"""bench/scale.py at a tiny size: it completes within its phases and its bare evaluation finds the hits recarena's
evaluator counted (the check that the two sides ranked the same lists; timings mean nothing at this size)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_scale_bench_runs_small_and_both_sides_find_the_same_hits() -> None:
    args = ["--n-ratings", "60000", "--n-users", "600", "--n-items", "300", "--batch-size", "2048"]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), *args], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for line in ("cached load", "one MF epoch", "the same MF maths as a bare loop", "full-catalogue test evaluation"):
        assert line in out, (line, out)
    counts = re.search(r"\(([\d,]+) hits; recarena ([\d,]+)\)", out)
    assert counts, out
    bare, ours = (int(n.replace(",", "")) for n in counts.groups())
    assert bare == ours > 0, out
