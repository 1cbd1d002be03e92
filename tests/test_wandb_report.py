"""logger=wandb, offline: each run's W&B files hold the sample recommendations, the item PCA image and the final
metrics; a multirun leaves one more W&B run, in the sweep's group, with the leaderboard table."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from recarena.run import train
from recarena.wandb_report import RECOMMENDATION_COLUMNS
from tests.conftest import TINY_DATA
from tests.test_train import _read_wandb_history, _run_train, _wandb_records

pytest.importorskip("wandb", reason="wandb is a test extra; make test installs it")
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _offline_run(parent: Path) -> Path:
    (run,) = parent.glob("wandb/offline-run-*")
    return run


def _wait_for(run: Path, done: Callable[[list[dict]], bool]) -> list[dict]:
    """The run's history once ``done`` holds of it: wandb's service writes the file a moment after finish()
    returns on a loaded machine (30 s at most, then what was read, for the assertion message)."""
    deadline = time.monotonic() + 30
    while not done(rows := _read_wandb_history(run)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return rows


def _logged(rows: list[dict], key: str, kind: str) -> dict:
    """The ``key/...`` fields of the row that logged ``key`` as a ``kind`` (``table-file``, ``image-file``)."""
    row = next((r for r in rows if r.get(f"{key}/_type") == kind), None)
    assert row is not None, f"no {kind} {key!r} in {[sorted(r) for r in rows]}"
    return {name.split("/", 1)[1]: value for name, value in row.items() if name.startswith(f"{key}/")}


@pytest.mark.parametrize("model", ["mf", "popularity"])
def test_wandb_run_holds_recommendations_pca_and_final_metrics(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    result = train(make_cfg(f"model={model}", "logger=wandb", "logger.wandb.offline=true", "trainer.max_epochs=1",
                            "report.wandb_users=3", "report.wandb_k=4"))
    run = _offline_run(tmp_path / "run")
    rows = _wait_for(run, lambda rows: any("recommendations/_type" in r for r in rows))

    table = _logged(rows, "recommendations", "table-file")
    content = json.loads((run / "files" / table["path"]).read_text())
    assert content["columns"] == RECOMMENDATION_COLUMNS and table["nrows"] == len(content["data"]) == 3 * 4
    # Exactly what `recarena recommend` says: the first three users with training ratings, their top 4.
    from recarena.inference import load_run

    loaded = load_run(tmp_path / "run")
    expected = loaded.recommend(users=[r[0] for r in content["data"][::4]], k=4)
    got = [(r[0], r[1], r[2]) for r in content["data"]]
    assert got == list(expected[["user_id", "rank", "movie_id"]].itertuples(index=False, name=None))
    assert [r[0] for r in content["data"][::4]] == sorted({r[0] for r in content["data"]})
    assert all(isinstance(r[3], str) and r[3] for r in content["data"])  # titles

    images = [r for r in rows if "item_pca/_type" in r]
    if model == "mf":
        image = _logged(rows, "item_pca", "image-file")
        assert (run / "files" / image["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not images  # popularity has no item vectors: no PCA, no error

    # Final metrics: W&B's summary keeps each key's last value, Lightning logged the best checkpoint's last.
    summary = {k: v for update in _read_wandb_history(run, "summary") for k, v in update.items()}
    for part in ("val", "test"):
        for key in (f"{part}/ndcg@10", f"{part}/recall@20"):
            assert summary[key] == pytest.approx(result[part][key]), key


def test_multirun_logs_leaderboard_to_a_wandb_run_of_the_group(tmp_path: Path, data_cache: Path) -> None:
    """No group= given: the sweep names the group of its jobs' runs and of the leaderboard run."""
    sweep = tmp_path / "multirun" / "2026-11-23" / "10-00-00"
    proc = _run_train(
        ["-m", "model=popularity,mf", *TINY_DATA, "trainer=cpu", "trainer.max_epochs=1", "logger=wandb",
         "logger.wandb.offline=true", "report.wandb_users=2", "trainer.enable_progress_bar=false",
         "verbose=false", f"hydra.sweep.dir={sweep}"],
        tmp_path, {"RECARENA_DATA": str(data_cache), "OMP_NUM_THREADS": "1", **OFFLINE},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    board_run = _offline_run(sweep)
    rows = _wait_for(board_run, lambda rows: any("leaderboard/_type" in r for r in rows))
    table = _logged(rows, "leaderboard", "table-file")
    content = json.loads((board_run / "files" / table["path"]).read_text())
    columns = content["columns"]
    assert {"model", "config_key", "n_seeds", "test/ndcg@10_mean"} <= set(columns)
    assert sorted(r[columns.index("model")] for r in content["data"]) == ["mf", "popularity"]  # one per config
    assert _logged(rows, "leaderboard_metrics", "image-file")["format"] == "png"

    def run_info(path: Path) -> tuple[str, str]:
        (run,) = [r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run"][:1]
        return run.run_group, run.job_type

    group = "sweep-2026-11-23-10-00-00"
    assert run_info(board_run) == (group, "leaderboard")
    assert {run_info(_offline_run(sweep / job))[0] for job in ("0", "1")} == {group}  # the jobs' runs too
