"""``recarena benchmark``: validation-only tuning with one budget per family, report seeds tested once, resume,
and one-line errors before any training."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from recarena import benchmark as bench
from recarena.benchmark import compose_family, parse_args, seed_dependent_split
from recarena.cli import main as cli
from recarena.paths import CONF_DIR

TINY = ["data=synthetic", "data.n_users=120", "data.n_items=80", "data.n_ratings=4000", "trainer=cpu"]
ARGS = ["--families", "ease", "mf_bpr", "--trials", "2", "--report-seeds", "1", "2", "--max-epochs", "2",
        "--patience", "1"]  # fmt: skip


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_benchmark_tunes_on_validation_reports_each_seed_once_and_resumes(
    tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    out = tmp_path / "bench"
    assert cli(["benchmark", *ARGS, "--out", str(out), "--", *TINY]) == 0

    tuning = json.loads((out / "tuning.json").read_text())
    assert set(tuning["families"]) == {"ease", "mf_bpr"}
    for family, entry in tuning["families"].items():
        assert entry["search_space"] == bench.search_space(family) and entry["search_space"]
        (search,) = entry["searches"]  # the temporal split does not change with the seed: one search
        assert search["report_seeds"] == [1, 2] and len(search["trials"]) == 2
        assert all(t["state"] == "COMPLETE" and t["run_dir"] for t in search["trials"])
        best = max(search["trials"], key=lambda t: t["value"])
        assert search["best_value"] == best["value"] and search["best_params"] == best["params"]
        # The report runs train the chosen settings, and only they hold test metrics.
        for seed in (1, 2):
            report = metrics(out / "report" / family / f"seed-{seed}")
            assert report["seed"] == seed and report["test"]["test/ndcg@10"] >= 0
            chosen = {f"{k}={bench.override_value(v)}" for k, v in best["params"].items()}
            assert chosen <= {o.lower() for o in report["overrides"]}  # a multirun writes booleans as True/False
    trials = list((out / "tuning").rglob("metrics.json"))
    assert len(trials) == 4 and all(metrics(p.parent)["test"] == {} for p in trials)  # no trial saw the test set
    assert not list((out / "tuning").rglob("per_user_metrics.parquet"))
    board = (out / "leaderboard.md").read_text()
    assert "family=ease" in board and "family=mf_bpr" in board
    assert {p.name for p in out.iterdir()} >= {"leaderboard.csv", "leaderboard.html", "tuning.json"}

    # Rerunning the same command resumes: nothing finished runs again; a missing report run is redone.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    shutil.rmtree(out / "report" / "ease" / "seed-2")
    capsys.readouterr()
    assert cli(["benchmark", *ARGS, "--out", str(out), "--", *TINY]) == 0
    after = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    redone = {p for p in after if stamps.get(p) != after[p]}
    assert redone == {out / "report" / "ease" / "seed-2" / "metrics.json"}
    assert len(json.loads((out / "tuning.json").read_text())["families"]["ease"]["searches"][0]["trials"]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--families", "ease", "nosuch"], r"--families: unknown family nosuch; known: .*ease.*mf_bpr"),
        (["--trials", "-1"], r"--trials must be 0 .* got -1"),
        (["--jobs", "0"], r"--jobs must be 1 .* got 0"),
        (["--objective", "test/ndcg@10"], r"--objective must be a validation metric"),
        (["--families", "ials", "--", "split=users"], r"split=users .*model=ials"),
        (["--objective", "val/rmse", "--families", "mf", "ease"], r"needs families that predict ratings; ease do not"),
        (["--families", "ease", "--", "optimzer.lr=1"], r"the overrides after -- do not compose with family=ease"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2_before_training(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") :]) if "--" in argv else (argv, [])
    with pytest.raises(SystemExit) as exit_info:
        cli(["benchmark", *own, "--out", str(tmp_path / "b"), *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "b").exists()  # nothing trained, nothing written


def test_a_family_without_a_search_space_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "search_space" / "ease.yaml").unlink()
    monkeypatch.setattr(bench, "CONF_DIR", conf)
    with pytest.raises(SystemExit) as exit_info:
        cli(["benchmark", "--families", "ease", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "family ease has no search space: write conf/search_space/ease.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "per_seed"),
    [
        ([], False),  # temporal
        (["split=leave_one_out"], False),
        (["split=random"], True),
        (["split=random", "split.seed=7"], False),  # a fixed split seed: one split for every report seed
        (["data.curation.max_users=50"], True),  # curation samples users by the seed
        (["split=users"], True),
    ],
)
def test_one_search_serves_every_seed_only_when_the_split_ignores_the_seed(overrides: list[str], per_seed: bool) -> None:
    assert seed_dependent_split(compose_family("popularity", overrides)) is per_seed


def test_the_default_directory_is_the_same_for_the_same_command() -> None:
    one = parse_args(["--families", "ease", "--", "data=ml-100k"])
    again = parse_args(["--families", "ease", "mf_bpr", "--", "data=ml-100k"])  # the family list is not in the key
    other = parse_args(["--families", "ease", "--trials", "5", "--", "data=ml-100k"])
    assert one.out == again.out != other.out and one.out.name.startswith("ndcg10-")
    assert parse_args([]).families == sorted(parse_args([]).families) and "ials" in parse_args([]).families
    assert set(parse_args(["--objective", "val/rmse"]).families) == {"mf", "mlp", "twotower_mse"}


def test_a_second_benchmark_on_the_same_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "benchmark.lock").write_text(str(os.getpid()))  # this test's process: alive
    with pytest.raises(SystemExit) as exit_info:
        cli(["benchmark", "--families", "popularity", "--trials", "0", "--out", str(out)])
    assert exit_info.value.code == 2 and "another benchmark (process" in capsys.readouterr().err
    with bench.owning(tmp_path / "c"):  # a lock left by a dead process is taken over
        assert (tmp_path / "c" / "benchmark.lock").read_text() == str(os.getpid())
    assert not (tmp_path / "c" / "benchmark.lock").exists()


def test_jobs_run_through_the_parallel_launcher_and_name_their_own_directory() -> None:
    """--jobs 2: trials and report runs two at a time (Optuna proposing two trials per batch searches differently
    from one at a time, hence another directory); a launcher named in the overrides is the user's choice."""
    one, two = parse_args(["--families", "ease"]), parse_args(["--families", "ease", "--jobs", "2"])
    assert "hydra/launcher=parallel" in two.run_overrides() and "hydra.launcher.n_jobs=2" in two.run_overrides()
    assert not any(o.startswith("hydra/launcher") for o in one.run_overrides()) and one.out != two.out
    own = parse_args(["--families", "ease", "--jobs", "4", "--", "hydra/launcher=submitit_local"])
    assert [o for o in own.run_overrides() if o.startswith("hydra/launcher")] == ["hydra/launcher=submitit_local"]
