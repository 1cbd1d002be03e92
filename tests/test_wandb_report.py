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


def _wandb_config(run: Path) -> dict:
    """The run's config as W&B stored it: the run record's config, then every later config update."""
    config = {}
    for record in _wandb_records(run):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        config |= {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in updates}
    return config


def test_wandb_run_config_holds_the_whole_config_and_the_best_monitored_value(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs can be filtered and grouped by any setting: the whole resolved config with dotted keys, the chosen
    options, the parameter counts, the split fingerprint and the run dir; and the summary is the best
    checkpoint's (the monitored metric at its best over the epochs)."""
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    result = train(make_cfg("model=mf", "loss=bpr", "logger=wandb", "logger.wandb.offline=true", "optimizer.lr=0.004",
                            "seed=7", "data.curation.min_user_ratings=2", "trainer.max_epochs=3"))  # fmt: skip
    run_dir = tmp_path / "run"
    run = _offline_run(run_dir)
    rows = _wait_for(run, lambda rows: len([r for r in rows if "val/ndcg@10" in r]) >= 3)  # the file is complete
    config = _wandb_config(run)

    from recarena.inference import load_run

    model = load_run(run_dir).model
    expected = {
        "optimizer.lr": 0.004, "seed": 7, "loss._target_": "recarena.losses.BPRLoss", "split.name": "temporal",
        "data.curation.min_user_ratings": 2, "data.name": "synthetic", "trainer.precision": "32-true",
        "trainer.max_epochs": 3, "batch_size": 1024, "model.n_factors": 50, "eval.ks": [10, 20],
        "choice.model": "mf", "choice.loss": "bpr", "choice.split": "temporal", "choice.optimizer": "adam",
        "params.total": sum(p.numel() for p in model.parameters()), "threads": result["threads"],
        "split.fingerprint": result["split_fingerprint"], "run_dir": str(run_dir),
    }  # fmt: skip
    assert {key: config.get(key) for key in expected} == expected
    assert not any(key.startswith("choice.hydra") for key in config)
    # logger=wandb keeps the CSV logger (leaderboard.html's curves), and it gets the same keys.
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert "choice.model: mf" in (run_dir / "csv" / "hparams.yaml").read_text()

    # The summary is the best checkpoint's: for the monitored metric, its best value over the epochs.
    epochs = [r["val/ndcg@10"] for r in rows if "val/ndcg@10" in r]
    summary = {k: v for update in _read_wandb_history(run, "summary") for k, v in update.items()}
    assert summary["val/ndcg@10"] == pytest.approx(max(epochs)) == pytest.approx(result["val"]["val/ndcg@10"])
    assert summary["best_epoch"] == result["best_epoch"]


def test_wandb_sweep_example_composes_into_a_train_command(tmp_path: Path) -> None:
    """docs/wandb_sweep.yaml: the command W&B's agent would run (Hydra overrides from ${args_no_hyphens})
    composes into a valid config holding the proposed values, over the keys of the benchmark's search space."""
    from omegaconf import OmegaConf

    from recarena.benchmark import search_space
    from recarena.checks import check_config
    from tests.conftest import compose_config

    sweep = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "docs" / "wandb_sweep.yaml"))
    assert sweep["program"] == "train.py" and "${args_no_hyphens}" in sweep["command"]
    assert set(sweep["parameters"]) <= set(search_space("mf_bpr"))
    proposed = {key: spec["values"][-1] if "values" in spec else spec["max"]
                for key, spec in sweep["parameters"].items()}  # fmt: skip
    args = [f"{key}={value}" for key, value in proposed.items()]  # what ${args_no_hyphens} expands to
    fixed = [a for a in sweep["command"] if "=" in a and not a.startswith("$")]
    cfg = compose_config([*fixed, *args], tmp_path / "run")
    check_config(cfg)
    assert cfg.eval.monitor == sweep["metric"]["name"] and cfg.eval.monitor_mode == "max"
    assert {key: OmegaConf.select(cfg, key) for key in proposed} == proposed
    assert "wandb" in cfg.logger
