"""A sweep stores its corpus and split once: each job's run dir holds hard links to that copy (a copy where links
cannot be made), so every run dir stays self-contained and loads on its own."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from recarena.inference import load_run
from recarena.rundir import CORPUS_DIR, SHARED_RUN_DATA, SPLIT_FILE
from tests.conftest import TINY_DATA
from tests.test_train import _run_train


@pytest.mark.slow
def test_the_jobs_of_a_sweep_share_one_stored_copy_and_each_run_dir_loads(tmp_path: Path, data_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _run_train(["-m", "model=mf", "optimizer.lr=1e-3,5e-3", *TINY_DATA, "trainer=cpu", "trainer.max_epochs=1",
                       "trainer.enable_progress_bar=false", "verbose=false", f"hydra.sweep.dir={sweep}"],
                      tmp_path, {"RECARENA_DATA": str(data_cache), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    (store,) = (sweep / SHARED_RUN_DATA).iterdir()
    for name in (f"{CORPUS_DIR}/ratings.npz", SPLIT_FILE):
        stored = (store / name).stat()
        assert stored.st_nlink == 3  # the stored copy and one link per run dir
        assert all((run / name).stat().st_ino == stored.st_ino for run in runs)
    shutil.rmtree(sweep / SHARED_RUN_DATA)  # the run dirs do not depend on the store
    first, second = (load_run(run) for run in runs)
    assert np.array_equal(first.corpus.ratings, second.corpus.ratings)
    assert first.split.fingerprint == second.split.fingerprint


def test_a_filesystem_without_hard_links_gets_copies(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     trained) -> None:  # fmt: skip
    from recarena import rundir

    run = load_run(trained("mf")[0])

    def no_links(*args: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "job"
    rundir.save_run_data(target, run.corpus, run.split, run.datamodule.schema, "mf", "mse", shared=tmp_path / "store")
    copied = target / CORPUS_DIR / "ratings.npz"
    assert copied.stat().st_nlink == 1 and copied.read_bytes() == next((tmp_path / "store").glob(
        f"*/{CORPUS_DIR}/ratings.npz")).read_bytes()  # fmt: skip
    corpus, split = rundir.read_run_data(target, json.loads((target / "run.json").read_text()))
    assert corpus.n_ratings == run.corpus.n_ratings and split.fingerprint == run.split.fingerprint
