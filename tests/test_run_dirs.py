"""Runs you can trust: a run dir holds one run, the best epoch is the best checkpoint's, every option's range is
checked before any data work, and one failing job neither stops nor hides a sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from recarena.checks import check_config
from recarena.cli import main as cli
from recarena.errors import ConfigError
from recarena.run import train
from tests.conftest import TINY_DATA, compose_config
from tests.test_train import REPO, _run_train

QUIET = ["trainer=cpu", "trainer.enable_progress_bar=false", "verbose=false"]


def test_a_finished_run_dir_is_refused_and_overwrite_replaces_it_whole(make_cfg, tmp_path: Path) -> None:
    first = train(make_cfg("trainer.max_epochs=1"))
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"hydra.run.dir: .* holds a finished run \(metrics.json\).*overwrite=true"):
        train(make_cfg("trainer.max_epochs=3"))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == first["epochs"] == 1  # untouched

    second = train(make_cfg("trainer.max_epochs=3", "overwrite=true"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no best-v1
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["epochs"] == second["epochs"] == 3
    # What load_run reads is what metrics.json describes: the best checkpoint of the second run.
    epoch = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["epoch"]
    assert epoch + 1 == saved["best_epoch"]


def test_a_fresh_run_in_an_unfinished_dir_leaves_nothing_of_the_earlier_one(make_cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"an earlier, killed run")
    (run_dir / "per_user_metrics.parquet").write_bytes(b"stale")
    train(make_cfg("trainer.max_epochs=1"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(pd.read_parquet(run_dir / "per_user_metrics.parquet")) > 0


def test_best_epoch_is_the_best_checkpoints_one_based_and_not_logged_twice(make_cfg, tmp_path: Path) -> None:
    one = train(make_cfg("trainer.max_epochs=1"))
    assert one["best_epoch"] == 1 and one["epochs"] == 1
    result = train(make_cfg("trainer.max_epochs=4", "overwrite=true", "callbacks.early_stopping=null"))
    checkpoint = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=False)
    assert result["best_epoch"] == checkpoint["epoch"] + 1 and 1 <= result["best_epoch"] <= 4
    curve = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    validations = curve.dropna(subset=[result["monitor"]])
    assert list(validations["epoch"]) == [0, 1, 2, 3]  # each epoch once: the best checkpoint's re-validation is not
    best = validations[result["monitor"]].min()  # val/rmse
    assert result["val"][result["monitor"]] == pytest.approx(best)
    assert validations[result["monitor"]].iloc[result["best_epoch"] - 1] == pytest.approx(best)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["split.val_fraction=0.95"], r"split.val_fraction \+ split.test_fraction must be < 1"),
        (["split.val_fraction=-0.1"], r"split.val_fraction must be in \[0, 1\), got -0.1"),
        (["split.name=bogus"], r"split.name='bogus' is unknown; known splits: leave_one_out, random"),
        (["data.curation.fraction=0"], r"data.curation.fraction must be a fraction in \(0, 1\]"),
        (["data.curation.max_users=0"], r"data.curation.max_users must be a positive integer or null"),
        (["eval.user_chunk=0"], r"eval.user_chunk must be a positive integer"),
        (["eval.head_share=2"], r"eval.head_share must be a fraction in \[0, 1\], got eval.head_share=2"),
        (["seed=abc"], r"seed must be an integer, got seed='abc'"),
        (["eval.tie_seed=1.5"], r"eval.tie_seed must be an integer or null"),
        (["data.device_resident=maybe"], r"data.device_resident must be auto, true or false"),
        (["compile=fast"], r"compile must be false, true, default, reduce-overhead, max-autotune, max-autotune-no"),
        (["optimizer.lr=-1"], r"optimizer.lr must be a positive number, got optimizer.lr=-1"),
        (["optimizer=sparse_adam", "optimizer.fused=maybe"], r"optimizer.fused must be true, false or null"),
        (["optimizer.fused=1"], r"optimizer.fused must be true, false or null \(torch's choice\), got optimizer.fused=1"),
        (["trainer.max_epochs=0"], r"trainer.max_epochs must be 1 or more \(-1: until early stopping"),
        (["loss=bpr", "eval.ks=[5,20]"], r"eval.monitor=val/ndcg@10 is not a metric this run computes \(loss=bpr, "
                                         r"eval.ks=\[5, 20\]\); it computes val/recall@5, "),
        (["eval.monitor=val/rmsee"], r"eval.monitor=val/rmsee is not a metric .* it computes val/rmse, val/mae, "),
        (["split.val_fraction=0"], r"split.val_fraction=0 leaves no validation set for eval.monitor=val/rmse, which "
                                   r"callbacks.early_stopping and callbacks.model_checkpoint follow"),
    ],
)
def test_every_option_range_is_checked_at_start_up(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config([*TINY_DATA, *overrides], tmp_path / "run"))


def test_no_validation_set_is_allowed_when_nothing_follows_it(tmp_path: Path) -> None:
    """A fixed number of epochs with early stopping and the best checkpoint off: the refit on train + validation."""
    check_config(compose_config([*TINY_DATA, "split.val_fraction=0", "callbacks.early_stopping=null",
                                 "callbacks.model_checkpoint=null"], tmp_path / "run"))  # fmt: skip


def test_a_bad_option_is_one_line_and_exit_code_2_before_any_data_work(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    proc = _run_train(["trainer.max_epochs=0", *TINY_DATA, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
                      {"RECARENA_DATA": str(cache)})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: trainer.max_epochs must be 1 or more (-1: until early stopping stops it), got trainer.max_epochs=0."
    ]
    assert not list(cache.iterdir())  # nothing generated or parsed


def test_two_runs_started_together_get_two_run_dirs(tmp_path: Path, data_cache: Path) -> None:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {"RECARENA_DATA": str(data_cache), "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "train.py"), *TINY_DATA, *QUIET, "trainer.max_epochs=1"]
    procs = [subprocess.Popen(command, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    finished = list((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(finished) == 2 and len({p.parent for p in finished}) == 2
    assert (tmp_path / "outputs" / "latest").resolve() in {p.parent for p in finished}  # the newest single run


def test_an_unfinished_run_says_so_and_how_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "killed"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 42\n")
    with pytest.raises(SystemExit) as exit_info:
        cli(["recommend", str(run_dir), "--user", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did not finish (no run.json, no metrics.json)" in err
    assert f"ckpt_path={run_dir}/checkpoints/last.ckpt" in err


def test_a_failing_job_neither_stops_nor_hides_the_sweep_and_a_rerun_resumes_it(tmp_path: Path, data_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=1024,0,512", *TINY_DATA, *QUIET, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
    proc = _run_train(args, tmp_path, {"RECARENA_DATA": str(data_cache)})
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep failed, after every job ran and reports were written
    assert "error: batch_size must be a positive integer, got batch_size=0." in proc.stderr
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "2" / "metrics.json").is_file()
    error = json.loads((sweep / "1" / "error.json").read_text())
    assert error["status"] == "failed" and error["error"].startswith("batch_size must be a positive integer")
    runs = pd.read_csv(sweep / "leaderboard.csv")
    failed = runs[runs["status"] == "failed"]
    assert len(runs) == 3 and list(failed["config_key"].str.split().str[0]) == ["batch_size=0"]
    assert "- failed: `batch_size=0 " in (sweep / "leaderboard.md").read_text()
    assert "batch_size must be a positive integer" in (sweep / "leaderboard.html").read_text()

    # Rerun: the finished jobs are skipped (their metrics.json untouched), the missing one runs again.
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    (sweep / "2" / "metrics.json").unlink()
    again = _run_train(args, tmp_path, {"RECARENA_DATA": str(data_cache)})
    assert again.returncode == 1 and (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp
    assert (sweep / "2" / "metrics.json").is_file()


def test_a_sweep_whose_every_job_fails_still_writes_its_leaderboard(tmp_path: Path, data_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _run_train(["-m", "optimizer.lr=-1,-2", *TINY_DATA, *QUIET, f"hydra.sweep.dir={sweep}"], tmp_path,
                      {"RECARENA_DATA": str(data_cache)})  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    board = (sweep / "leaderboard.md").read_text()
    assert "2 jobs failed" in board and "optimizer.lr must be a positive number" in board


@pytest.mark.parametrize("loss", ["mse", "bpr"])
def test_one_epoch_and_a_resumed_one_give_what_two_straight_epochs_give(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    """The epoch's shuffle (seeded by the restored epoch) and the random streams (BPR's negatives) continue as if
    the run had never stopped: the same metrics.json metrics as running straight through (same machine, CPU)."""
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    base = [*TINY_DATA, *QUIET, "model=mf", f"loss={loss}", "callbacks.early_stopping=null"]
    straight = train(compose_config([*base, "trainer.max_epochs=2"], tmp_path / "straight"))
    train(compose_config([*base, "trainer.max_epochs=1"], tmp_path / "resumed"))
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    resumed = train(compose_config([*base, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "resumed"))
    assert resumed["epochs"] == straight["epochs"] == 2
    assert resumed["val"] == straight["val"] and resumed["test"] == straight["test"]


def test_a_checkpoint_save_killed_midway_leaves_the_previous_one_whole(tmp_path: Path, monkeypatch) -> None:
    from recarena.checkpoint_io import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "best.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.arange(10)}, path)
    real_save = torch.save

    def killed(obj, handle, *args, **kwargs):  # half the bytes reach the disk, then the process "dies"
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(handle.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.arange(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the previous checkpoint, whole
    assert [p.name for p in path.parent.iterdir()] == ["best.ckpt"]  # no temporary file left behind


def test_a_failed_jobs_line_names_the_root_cause() -> None:
    from recarena.run import _error_line

    try:
        try:
            raise ZeroDivisionError("division by zero\nmore detail")
        except ZeroDivisionError as inner:
            raise RuntimeError("Error in call to target 'recarena.models.mf.MatrixFactorization':") from inner
    except RuntimeError as error:
        assert _error_line(error) == "ZeroDivisionError: division by zero"
    assert _error_line(ConfigError("batch_size must be positive\nsecond")) == "batch_size must be positive"


@pytest.mark.parametrize(
    ("overrides", "warning"),
    [
        (["callbacks.model_checkpoint=null"], "callbacks.model_checkpoint is off: the test scores the last epoch's"),
        (["scheduler=onecycle"], "scheduler=onecycle is sized to trainer.max_epochs=2, but callbacks.early_stopping"),
        (["model=twotower", "loss=logq", "loss.q_alpha=0.5"], "loss.q_alpha=0.5 does nothing with loss.q_estimator"),
        (["split.seed=3"], "split.seed=3 does nothing: split=temporal does not depend on a seed."),
        (["trainer=ddp", "minibatches_per_step=4"], "minibatches_per_step=4 is forced to 1 under DDP"),
        (["optimizer=sparse_adam", "optimizer.weight_decay=0.1"], "optimizer.weight_decay=0.1 decays the dense"),
    ],
)
def test_settings_that_silently_do_less_are_named_once(overrides: list[str], warning: str, tmp_path: Path) -> None:
    from recarena.checks import config_warnings

    lines = config_warnings(compose_config([*TINY_DATA, "trainer.max_epochs=2", *overrides], tmp_path / "run"))
    assert len(lines) == 1 and lines[0].startswith(warning), lines


def test_the_defaults_and_every_family_preset_raise_no_such_warning(tmp_path: Path) -> None:
    from recarena.checks import config_warnings, family_presets

    for preset in [None, *family_presets()]:
        overrides = [f"family={preset}"] if preset else []
        assert config_warnings(compose_config([*TINY_DATA, *overrides], tmp_path / "run")) == [], preset


def test_a_warning_is_logged_once_by_the_run(make_cfg, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="recarena.run"):
        train(make_cfg("split.seed=3", "trainer.max_epochs=1"))
    assert [r.getMessage() for r in caplog.records if "split.seed" in r.getMessage()] == [
        "split.seed=3 does nothing: split=temporal does not depend on a seed."
    ]


def test_the_progress_bar_counts_epochs_from_one_as_metrics_json_does() -> None:
    from types import SimpleNamespace

    from recarena.timing import ProgressBar

    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=4)
    assert bar._get_train_description(2).strip() == "epoch 3 of 4"


def test_the_best_epochs_validation_is_read_not_computed_again(make_cfg, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """After fit, metrics.json's validation is the best checkpoint's epoch as recorded during training (no second
    validation pass), and equals a fresh validation of that checkpoint."""
    import lightning as L

    from recarena import load_run
    from recarena.inspection import evaluate

    calls = []
    validate = L.Trainer.validate
    monkeypatch.setattr(L.Trainer, "validate", lambda self, *a, **k: calls.append(k) or validate(self, *a, **k))
    result = train(make_cfg("model=mf", "trainer.max_epochs=4", "callbacks.early_stopping.patience=10"))
    assert calls == [] and result["best_epoch"] is not None
    again = evaluate(load_run(tmp_path / "run"), part="val")
    for key in ("val/ndcg@10", "val/recall@20", "val/rmse"):
        assert result["val"][key] == pytest.approx(float(again[key.split("/", 1)[1]]), rel=1e-5), key
