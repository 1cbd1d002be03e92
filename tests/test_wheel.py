"""The wheel works on its own: built from the source tree, installed into a fresh virtual environment outside the
repository, ``recarena train`` trains from another directory with the configs the wheel carries.

Offline: the wheel is built without build isolation (this environment's setuptools), installed with ``--no-deps
--no-index``, and the new environment reads this one's dependencies (torch, Lightning, Hydra, ...) through a
``.pth`` line. A ``.pth`` file inside a directory added that way is not processed, so this environment's
editable recarena stays invisible there: the only recarena the new environment can import is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY_DATA

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, command))}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the source tree (an in-place build would leave build/ in the checkout)."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ".",
         cwd=tree)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("recarena-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    where = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path)
    purelib = Path(where.stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
    (purelib / "_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel,
         cwd=tmp_path)  # fmt: skip
    return venv


@pytest.mark.slow
def test_the_installed_wheel_trains_from_any_directory(tmp_path: Path, data_cache: Path) -> None:
    venv = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"RECARENA_DATA": str(data_cache), "OMP_NUM_THREADS": "1"}
    where = _run(venv / "bin" / "python", "-c", "import recarena; print(recarena.__file__)", cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's recarena, not the checkout's

    run_dir = elsewhere / "run"
    _run(venv / "bin" / "recarena", "train", *TINY_DATA, "model=mf", "loss=bpr", "trainer=cpu", "trainer.max_epochs=1",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", cwd=elsewhere, env=env)  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["model"], metrics["loss"], metrics["epochs"]) == ("mf", "bpr", 1)
    assert "model=mf" in metrics["overrides"]
    sources = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.config_sources
    main = next(source.path for source in sources if source.provider == "main")
    assert Path(main).is_relative_to(venv)  # composed from the configs inside the installed wheel
