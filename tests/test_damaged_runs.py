"""A damaged run dir or resume checkpoint: one line naming the file and what to do, exit code 2, never a traceback;
``recommend --user`` falls back from a damaged export to the model and gives the same answer."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recarena.cli import main as cli
from recarena.errors import ConfigError
from recarena.inference import load_run
from recarena.run import train
from tests.conftest import Trained


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    subprocess.run(["cp", "-a", str(run_dir), str(copy)], check=True)  # -a keeps the mtimes the export checks
    return copy


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _no_export(run_dir: Path) -> None:
    """The export answers without reading config.yaml (rightly: it holds the checkpoint's vectors); without it the
    command loads the model, which does."""
    subprocess.run(["rm", "-r", str(run_dir / "export")], check=True)


def _resize_config(run_dir: Path) -> None:
    _no_export(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.model.n_factors = 7
    OmegaConf.save(cfg, run_dir / "config.yaml")


def _recommend(run_dir: Path, user: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli(["recommend", str(run_dir), "--user", str(user), "-k", "5", "--format", "csv"])
    except SystemExit as exit_info:
        code = int(exit_info.code)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda run: _truncate(run / "checkpoints" / "best.ckpt"), r"checkpoints/best\.ckpt is damaged"),
        (lambda run: (run / "checkpoints" / "best.ckpt").write_text('{"not": "a checkpoint"}'),
         r"best\.ckpt is damaged or not a Lightning checkpoint"),
        (lambda run: _truncate(run / "data" / "corpus" / "ratings.npz"), r"data/corpus is damaged"),
        (_resize_config, r"best\.ckpt does not fit the model of .*config\.yaml"),
        (lambda run: _no_export(run) or (run / "config.yaml").write_text("model: [unclosed"),
         r"config\.yaml is unreadable"),
    ],
    ids=["truncated-checkpoint", "foreign-checkpoint", "truncated-corpus", "resized-config", "broken-config"],
)  # fmt: skip
def test_a_damaged_run_dir_is_one_line_naming_the_file(trained: Trained, tmp_path: Path, damage, named: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    run_dir = _copy(trained("mf")[0], tmp_path)
    user = int(load_run(run_dir).corpus.user_ids[0])
    damage(run_dir)
    code, out, err = _recommend(run_dir, user, capsys)
    assert code == 2 and not out, err
    assert len(err.strip().splitlines()) == 1 and re.search(named, err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("damage", ["corrupt-users", "corrupt-items", "missing-items"])
def test_recommend_falls_back_to_the_model_when_the_export_is_unusable(
    trained: Trained, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _copy(trained("mf")[0], tmp_path)
    user = int(load_run(run_dir).corpus.user_ids[0])
    code, intact, _ = _recommend(run_dir, user, capsys)
    assert code == 0
    export = run_dir / "export"
    if damage == "missing-items":
        (export / "items.parquet").unlink()
    else:
        (export / f"{damage.split('-')[1]}.parquet").write_bytes(b"PAR1 not parquet at all")
    code, out, err = _recommend(run_dir, user, capsys)
    assert code == 0, err
    model, export_answer = pd.read_csv(io.StringIO(out)), pd.read_csv(io.StringIO(intact))
    assert model["movie_id"].tolist() == export_answer["movie_id"].tolist()  # the model's answer: the same movies
    np.testing.assert_allclose(model["score"], export_answer["score"], rtol=1e-5)


def test_resuming_from_a_missing_damaged_or_foreign_checkpoint_fails_before_any_data_work(
    make_cfg, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recarena.run as run_module

    monkeypatch.setattr(run_module, "build_datamodule", lambda *a, **k: pytest.fail("data work before the check"))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((trained("mf")[0] / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    foreign = tmp_path / "weights.pt"
    __import__("torch").save({"weights": [1, 2]}, foreign)
    for path, message in ((tmp_path / "nope.ckpt", "no such file"), (truncated, "is damaged or not a checkpoint"),
                          (foreign, "not a Lightning training checkpoint")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"ckpt_path={re.escape(str(path))}.*{message}.*last.ckpt"):
            train(make_cfg("model=mf", f"ckpt_path={path}"))


def test_resuming_another_model_s_checkpoint_is_one_line(make_cfg, trained: Trained) -> None:
    other = trained("mf")[0] / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"ckpt_path=.*last\.ckpt does not fit this model .*loading state_dict"):
        train(make_cfg("model=mf", "model.n_factors=7", f"ckpt_path={other}"))
