"""bench/gpu.py is the script a GPU session runs once: it must work before a GPU is lent, so it runs here on the CPU
at a tiny size (its timings mean nothing here; that it completes and prints its table does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_bench_runs_on_cpu_at_a_tiny_size() -> None:
    args = ["--device", "cpu", "--ratings", "60000", "--users", "600", "--items", "300", "--eval-users", "600",
            "--steps", "16", "--batch-sizes", "1024", "4096", "--pipeline-seconds", "0.5"]  # fmt: skip
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), *args], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for row in ("MF epoch, batch 1,024", "MF epoch, batch 4,096", "MF epoch, batch 4,096, optimizer=sparse_adam",
                "MLP epoch, batch 4,096", "twotower_logq epoch", "mlp epoch", "top-20, 600 x 300"):
        assert any(line.startswith(row) for line in lines), (row, proc.stdout)


def test_the_gpu_session_script_refuses_an_unknown_mode_in_one_line() -> None:
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_session.sh"), "bogus"], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == "usage: bash bench/gpu_session.sh fetch|run [bench/gpu.py arguments]"
