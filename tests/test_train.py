"""End to end through the public entry points: recarena.run.train on composed configs, and train.py itself."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recarena import paths
from recarena.errors import ConfigError
from recarena.evaluation.ranking import seeded_tie_rank
from recarena.run import train
from tests.conftest import TINY_DATA, global_mean_rmse, ml100k_cache

REPO = Path(__file__).resolve().parents[1]


def test_mf_trains_and_writes_metrics(make_cfg, tmp_path: Path) -> None:
    result = train(make_cfg("model=mf"))
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["test"] == pytest.approx(result["test"])
    for key in ("test/rmse", "test/mae", "test/ndcg@10", "test/recall@20", "val/rmse", "test/coverage@10"):
        assert key in result["test"] or key in result["val"], key
    assert 0.3 < result["test"]["test/rmse"] < 2.0
    assert result["model"] == "mf" and result["loss"] == "mse" and result["data"] == "synthetic"
    assert result["epochs"] >= 1 and result["best_epoch"] is not None
    assert result["train_samples_per_s"] > 0 and len(result["split_fingerprint"]) >= 16
    assert result["dataset"]["ratings"] > 0 and "torch" in result["versions"]
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "csv" / "metrics.csv").exists()


def test_popularity_needs_no_training_and_scores_the_brute_force_ndcg(make_cfg) -> None:
    """The whole pipeline against a per-user loop written from the metric's definition: rank the items the user
    has not rated in training, validation or known ratings by training count (ties: the run seed's item order,
    ``seeded_tie_rank``, not the item index), relevant = the
    user's test ratings >= 4, NDCG@10 with binary gains, averaged over users with a relevant item."""
    from recarena.inference import load_run

    cfg = make_cfg("model=popularity")
    result = train(cfg)
    assert result["loss"] == "none" and result["epochs"] == 0
    assert "test/rmse" not in result["test"]
    c, s = (run := load_run(cfg.hydra.runtime.output_dir)).corpus, run.split
    tie_rank = seeded_tie_rank(c.n_items, int(cfg.seed)).numpy()
    order = np.lexsort((tie_rank, -np.bincount(c.items[s.train], minlength=c.n_items)))
    seen_rows = np.concatenate([s.train, s.val, s.known])
    ndcgs = []
    for user in np.unique(c.users[s.test]):
        relevant = set(c.items[s.test][(c.users[s.test] == user) & (c.ratings[s.test] >= 4)].tolist())
        if not relevant:
            continue
        seen = set(c.items[seen_rows][c.users[seen_rows] == user].tolist())
        top = [item for item in order.tolist() if item not in seen][:10]
        dcg = sum(1 / math.log2(rank + 2) for rank, item in enumerate(top) if item in relevant)
        ndcgs.append(dcg / sum(1 / math.log2(rank + 2) for rank in range(min(10, len(relevant)))))
    assert result["test"]["test/users_ranked"] == len(ndcgs) > 20
    assert result["test"]["test/ndcg@10"] == pytest.approx(float(np.mean(ndcgs)), rel=1e-6)


def test_evaluation_chunks_write_into_one_scores_block(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk of an evaluation scores into the block the first one allocated (a fresh one per chunk costs
    page faults on CPU: ``matmul_into``), the last, shorter chunk included, and the metrics are those of one chunk."""
    from recarena.models.mf import MatrixFactorization

    blocks: list[tuple[int, int]] = []
    original = MatrixFactorization.score_all

    def spy(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        blocks.append((out.data_ptr(), len(users)))
        return original(self, users, out)

    monkeypatch.setattr(MatrixFactorization, "score_all", spy)
    chunked = train(make_cfg("model=mf", "seed=3", "eval.user_chunk=7"))
    test_chunks = blocks[-math.ceil(chunked["test"]["test/users_ranked"] / 7):]
    assert len(test_chunks) > 2 and len({pointer for pointer, _ in test_chunks}) == 1
    assert len({rows for _, rows in blocks}) > 1  # a shorter last chunk wrote into the same block
    whole = train(make_cfg("model=mf", "seed=3", "eval.user_chunk=100000", "overwrite=true"))
    assert chunked["test"] == pytest.approx(whole["test"], rel=1e-6) and chunked["val"] == pytest.approx(whole["val"], rel=1e-6)


def test_same_seed_same_metrics(make_cfg, tmp_path: Path) -> None:
    first = train(make_cfg("model=mf", "seed=7"))
    second = train(make_cfg("model=mf", "seed=7", "overwrite=true"))  # the same run dir, on purpose
    assert first["test"] == second["test"] and first["val"] == second["val"]
    third = train(make_cfg("model=mf", "seed=8", "split=random", "overwrite=true"))
    assert third["split_fingerprint"] != first["split_fingerprint"]


def test_mf_learns_beyond_the_global_mean(make_cfg, tmp_path: Path) -> None:
    """The synthetic ratings come from latent factors: MF must beat predicting the training mean for every test
    rating by a clear margin (an optimiser that did nothing, lr=0, would not)."""
    result = train(make_cfg("model=mf", "trainer.max_epochs=15", "data.n_ratings=8000"))
    bar = global_mean_rmse(tmp_path / "run")
    assert result["test"]["test/rmse"] < 0.95 * bar, (result["test"]["test/rmse"], bar)


@pytest.mark.parametrize("optimizer", ["sparse_adam", "adamw", "sgd"])
def test_other_optimizers_and_schedulers_train(make_cfg, optimizer: str) -> None:
    result = train(make_cfg("model=mf", f"optimizer={optimizer}", "scheduler=onecycle"))
    assert result["test"]["test/rmse"] < 2.0


def test_resume_from_last_checkpoint(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("model=mf", "trainer.max_epochs=1", "callbacks.early_stopping.patience=10"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.exists()
    resumed = train(make_cfg("model=mf", "trainer.max_epochs=2", f"ckpt_path={last}"))  # a finished run, continued
    assert resumed["epochs"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]  # in place, no best-v1


@pytest.mark.parametrize("logger", ["tensorboard", "csv"])
def test_other_loggers(make_cfg, tmp_path: Path, logger: str) -> None:
    train(make_cfg("model=mf", f"logger={logger}", "trainer.max_epochs=1"))
    assert (tmp_path / "run" / logger).exists()


def test_wandb_offline_run_holds_metrics(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb is a test extra; make test installs it")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train(make_cfg("model=mf", "logger=wandb", "logger.wandb.offline=true", "trainer.max_epochs=1"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # wandb's service writes the file asynchronously; on a loaded machine the last records land a moment
    # after finish() returns, so read until they are there (or give up after 30 s and report what was read).
    deadline = time.monotonic() + 30
    while True:
        logged = _read_wandb_history(runs[0])
        done = any("val/rmse" in row for row in logged) and any("test/rmse" in row for row in logged)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any("val/rmse" in row for row in logged), logged
    assert any(row.get("test/rmse") == pytest.approx(result["test"]["test/rmse"]) for row in logged), logged


def _read_wandb_history(run_dir: Path, record_type: str = "history") -> list[dict]:
    """Logged rows of an offline run (``record_type="summary"``: its summary updates), each a dict of key (nested
    keys joined by "/", e.g. ``recommendations/_type``) to value."""
    rows = []
    for record in _wandb_records(run_dir):
        if record.WhichOneof("record_type") == record_type:
            items = record.history.item if record_type == "history" else record.summary.update
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return rows


def _wandb_records(run_dir: Path) -> list:
    """The records of an offline run's ``.wandb`` file, decoded with wandb's own protobuf ``Record`` schema.

    wandb >= 0.30 dropped its Python reader of ``.wandb`` files (the Go core reads them), and an offline run
    writes no summary file, so the file's framing is unpacked here: a 7-byte header, then LevelDB-log blocks of
    32 KiB whose records are (crc32: 4, length: 2, type: 1) + payload, FULL=1 or FIRST/MIDDLE/LAST=2/3/4.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B log"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # block trailer too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(raw):  # zero padding, or a record still being written
            break
        payload, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _run_train(args: list[str], cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # `tests` importable too
    env = {**os.environ, **env_extra, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_multirun_writes_leaderboard(tmp_path: Path, data_cache: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _run_train(
        ["-m", "model=popularity,mf", "optimizer.lr=1e-3,5e-3", *TINY_DATA, "trainer=cpu", "trainer.max_epochs=1",
         "trainer.enable_progress_bar=false", "verbose=false", f"hydra.sweep.dir={sweep}"],
        tmp_path, {"RECARENA_DATA": str(data_cache)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 4
    runs = pd.read_csv(sweep / "leaderboard.csv")
    assert len(runs) == 4 and {"model", "loss", "data", "split", "seed", "wall_seconds"} <= set(runs.columns)
    assert set(runs["model"]) == {"popularity", "mf"}
    markdown = (sweep / "leaderboard.md").read_text()
    assert markdown.count("| `model=mf optimizer.lr=") == 2  # one row per configuration, shared overrides above
    assert "Overrides shared by every configuration: `data.n_items=80" in markdown


def test_bad_option_fails_before_data_work(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    proc = _run_train(["model=popularity", "loss=mse"], tmp_path, {"RECARENA_DATA": str(cache)})
    assert proc.returncode == 2
    assert "model=popularity cannot be trained with loss=mse" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not cache.exists()  # nothing was downloaded or cached


@pytest.mark.slow
@pytest.mark.ml100k
def test_mf_on_ml100k_defaults(make_cfg) -> None:
    """The README's default command on the real ML-100K (from the cache `make data` fills)."""
    root = ml100k_cache()
    result = train(make_cfg(f"data.cache_dir={root}", "trainer.max_epochs=3", tiny=False))
    assert result["dataset"]["users"] == 943 and result["dataset"]["items"] == 1682
    assert result["test"]["test/rmse"] < 1.1


def test_minibatch_grouping_changes_no_result(make_cfg) -> None:
    """Several optimiser steps per Lightning step is a speed knob only: the same steps in the same order."""
    one = train(make_cfg("model=mf", "minibatches_per_step=1", "batch_size=256", "scheduler=onecycle"))
    eight = train(make_cfg("model=mf", "minibatches_per_step=8", "batch_size=256", "scheduler=onecycle",
                           "overwrite=true"))
    assert one["test"] == eight["test"] and one["val"] == eight["val"]


def test_custom_ratings_file_trains(make_cfg, tmp_path: Path) -> None:
    from tests.data_factories import write_release

    root = write_release(tmp_path / "mine", "custom", n_users=40, n_items=30, n_ratings=600)
    result = train(make_cfg("data=custom", f"data.path={root / 'ratings.csv'}", f"data.items_path={root / 'items.csv'}",
                            tiny=False))
    assert result["data"] == "custom" and result["dataset"]["users"] == 40
    assert "test/rmse" in result["test"]


def test_text_ids_are_numbered_and_answered_by_their_text(make_cfg, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A file whose user and item ids are text: the ids are numbered, the texts kept, and `recommend --user alice`
    answers (on the export path and on the model path alike); an unknown text is one line, exit 2."""
    from recarena.cli import main as cli
    from recarena.inference import load_run
    from tests.data_factories import write_release

    root = write_release(tmp_path / "mine", "custom", n_users=40, n_items=30, n_ratings=600)
    ratings = pd.read_csv(root / "ratings.csv")
    ratings["userId"] = "user-" + ratings["userId"].astype(str)
    ratings["movieId"] = "item-" + ratings["movieId"].astype(str)
    ratings.to_csv(root / "text.csv", index=False)
    train(make_cfg("model=mf", "data=custom", f"data.path={root / 'text.csv'}", tiny=False))
    run = load_run(tmp_path / "run")
    assert run.corpus.user_table["user_key"].str.startswith("user-").all() and run.corpus.n_users == 40
    someone = str(run.corpus.user_table["user_key"].iloc[run.corpus.users[run.split.train][0]])
    api = run.recommend(user=someone, k=5)
    assert api["title"].str.startswith("item-").all() and len(api) == 5  # items known by their text
    for export in (True, False):
        if not export:
            subprocess.run(["rm", "-r", str(tmp_path / "run" / "export")], check=True)
        assert cli(["recommend", str(tmp_path / "run"), "--user", someone, "-k", "5", "--format", "csv"]) == 0
        answer = pd.read_csv(io.StringIO(capsys.readouterr().out))
        assert answer["movie_id"].tolist() == api["movie_id"].tolist()
    with pytest.raises(SystemExit) as exit_info:
        cli(["recommend", str(tmp_path / "run"), "--user", "user-nobody"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: user 'user-nobody' is not in the training data of {tmp_path / 'run'}"


def test_implicit_feedback_trains_ranking_families_and_refuses_rating_losses(make_cfg, tmp_path: Path) -> None:
    """A file of interactions without ratings (data.rating_col=null): every row a positive and every held-out one
    relevant; MF trains on them with BPR, and MF's squared error is refused at start-up."""
    from tests.data_factories import write_release

    root = write_release(tmp_path / "mine", "custom", n_users=60, n_items=40, n_ratings=1500)
    ratings = pd.read_csv(root / "ratings.csv")
    ratings[ratings["rating"] >= 3.5].drop(columns="rating").to_csv(root / "clicks.csv", index=False)
    data = ["data=custom", f"data.path={root / 'clicks.csv'}", "data.rating_col=null"]
    with pytest.raises(ConfigError, match=r"data.rating_col=null \(implicit feedback\) has no ratings for "
                                          r"loss=mse to fit: use a ranking loss \(.*bpr"):  # fmt: skip
        train(make_cfg("model=mf", *data, tiny=False))
    result = train(make_cfg("model=mf", "loss=bpr", *data, tiny=False))
    users, relevant = result["eval_users"]["test"], result["test"]["test/users_ranked"]
    assert relevant == users[0] > 0  # every held-out interaction is relevant: every test user is ranked
    assert "test/rmse" not in result["test"]
    assert result["dataset"]["ratings"] == int((ratings["rating"] >= 3.5).sum())


@pytest.mark.parametrize(("layout", "release"), [("csv", "ml-latest-small"), ("ml-1m", "ml-1m")])
def test_downloaded_release_in_data_root_trains(make_cfg, tmp_path: Path, layout: str, release: str) -> None:
    from tests.data_factories import write_release

    root = write_release(tmp_path / "release", layout, n_users=40, n_items=30, n_ratings=600)
    trimmed = ["data.expected_ratings=null"] if layout == "ml-1m" else []  # 600 ratings, not ML-1M's 1,000,209
    result = train(make_cfg(f"data={release}", f"data.root={root}", *trimmed, tiny=False))
    assert result["data"] == release and result["dataset"]["ratings"] > 500


def test_missing_release_file_names_it(make_cfg, tmp_path: Path) -> None:
    from recarena.errors import DataError

    empty = tmp_path / "ml-1m"
    empty.mkdir()
    with pytest.raises(DataError, match=r"ratings\.dat"):
        train(make_cfg("data=ml-1m", f"data.root={empty}", tiny=False))


#: Two epochs of 25 optimiser steps each, early stopping off: long enough for two runs' steps to drift apart.
_GLOBAL_BATCH = [*TINY_DATA, "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "verbose=false",
                 "callbacks.early_stopping=null"]  # fmt: skip
#: The two-tower without dropout (each process would draw its own masks) and with every rating a positive
#: (3,200 training rows, even: DDP's equal shards then drop no row).
_INBATCH = ["family=twotower_inbatch", "model.dropout=0", "model.input_dropout=0", "loss.positive_threshold=null"]


@pytest.mark.slow
@pytest.mark.parametrize("family", [["family=mf"], _INBATCH], ids=["mf_mse", "twotower_inbatch"])
def test_ddp_trains_as_one_process_at_the_global_batch(family: list[str], tmp_path: Path, data_cache: Path) -> None:
    """trainer=ddp, 2 processes at batch 64, against 1 process at batch 128: the same global batches (each process
    takes every other row of the same permutation), gradients averaged across processes, so the same model up to
    float rounding, and the evaluator, with each user scored on exactly one process, gives the same metrics. For the
    in-batch softmax that holds only because the columns are gathered across processes (test_losses.py's
    test_under_ddp_a_process_scores_its_rows_against_every_process_s_columns: without, other columns)."""
    overrides = [*_GLOBAL_BATCH, *family]
    one = _run_train(["trainer=cpu", "batch_size=128", *overrides, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path,
                     {"RECARENA_DATA": str(data_cache)})  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    run_dir = tmp_path / "ddp"
    two = _run_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "batch_size=64", *overrides,
                      f"hydra.run.dir={run_dir}"], tmp_path, {"RECARENA_DATA": str(data_cache)})  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        for name, value in single[split].items():
            assert result[split][name] == pytest.approx(value, rel=2e-4, abs=1e-6), name
    # Both processes' users add up to the single-process count: no user padded in or counted twice.
    stats = result["dataset"]["test"]
    assert result["test"]["test/users_ranked"] + result["test"]["test/users_skipped"] == stats["users"]
    # The per-user file gathers both processes' users, each once (recarena.evaluation.per_user): the same users.
    per_user = pd.read_parquet(run_dir / "per_user_metrics.parquet")
    alone = pd.read_parquet(tmp_path / "one" / "per_user_metrics.parquet")
    assert per_user["user"].is_unique and per_user["user"].tolist() == alone["user"].tolist()
    assert per_user["ndcg@10"].mean() == pytest.approx(result["test"]["test/ndcg@10"], rel=1e-5)


@pytest.mark.slow
def test_compare_families_sweep_leaves_mean_and_std(tmp_path: Path, data_cache: Path) -> None:
    """experiment=compare_families: every family preset, several seeds, one leaderboard with mean ± std."""
    from omegaconf import OmegaConf

    families = OmegaConf.load(paths.CONF_DIR / "experiment" / "compare_families.yaml").hydra.sweeper.params.family
    sweep = tmp_path / "compare"
    proc = _run_train(
        ["-m", "experiment=compare_families", "seed=1,2", *TINY_DATA, "trainer=cpu", "trainer.max_epochs=1",
         "trainer.enable_progress_bar=false", "verbose=false", f"hydra.sweep.dir={sweep}"],
        tmp_path, {"RECARENA_DATA": str(data_cache), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = pd.read_csv(sweep / "leaderboard.csv")
    assert len(runs) == 2 * len(families.split(","))
    markdown = (sweep / "leaderboard.md").read_text()
    for family in families.split(","):
        assert f"`family={family}`" in markdown
    assert " ± " in markdown  # two seeds per configuration: mean ± std cells


def test_eval_max_users_scores_a_sample_and_says_so(make_cfg) -> None:
    full = train(make_cfg("model=popularity"))
    sampled = train(make_cfg("model=popularity", "eval.max_users=20", "overwrite=true"))
    n_test, n_all = sampled["eval_users"]["test"]
    assert n_test == 20 and n_all == full["eval_users"]["test"][0] > 20
    assert sampled["test"]["test/ndcg@10"] != full["test"]["test/ndcg@10"]
    with pytest.raises(ConfigError, match="eval.max_users"):
        train(make_cfg("model=popularity", "eval.max_users=0"))


@pytest.mark.parametrize("model", ["mf", "mlp"])
def test_the_rating_range_comes_from_the_data_not_the_familys_yaml(make_cfg, tmp_path: Path, model: str) -> None:
    """A 1-10 scale: y_range null (the default) gives (0, 10.5), so predictions are not capped at 5.5 as a
    hard-coded (0, 5.5) did; on 1-5 stars the same rule gives fastai's (0, 5.5)."""
    from recarena.inference import load_run
    from tests.data_factories import write_release

    root = write_release(tmp_path / "mine", "custom", n_users=40, n_items=30, n_ratings=600)
    ratings = pd.read_csv(root / "ratings.csv")
    ratings["rating"] = (ratings["rating"] * 2).round().clip(1, 10).astype(int)  # 1..10
    ratings.to_csv(root / "ratings.csv", index=False)
    result = train(make_cfg(f"model={model}", "data=custom", f"data.path={root / 'ratings.csv'}",
                            f"data.items_path={root / 'items.csv'}", "data.rating_scale=[1,10,1]",
                            "trainer.max_epochs=20", "callbacks.early_stopping=null", tiny=False))  # fmt: skip
    run = load_run(tmp_path / "run")
    assert (run.model.squash.low, run.model.squash.high) == (0.0, 10.5)
    mean = float(ratings["rating"].mean())
    assert mean > 5.5
    # Above the old cap of 5.5 (where the ratings' mean lies too), and an RMSE of the 1-10 scale's order.
    users = torch.arange(run.model.schema.n_users).repeat_interleave(run.model.schema.n_items)
    items = torch.arange(run.model.schema.n_items).repeat(run.model.schema.n_users)
    with torch.no_grad():
        predictions = run.model.predict_ratings(users, items)
    assert float(predictions.max()) > 5.5
    assert result["test"]["test/rmse"] < float(ratings["rating"].std()) + 0.5


def test_help_and_the_start_up_checks_import_no_torch(tmp_path: Path) -> None:
    """`python train.py --help` (and the launcher check before Hydra composes) stay light: the user-error classes
    live in recarena.errors, which imports nothing."""
    probe = ("import runpy, sys\nsys.argv = ['train.py', '--help']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'lightning', 'recarena.run') if m in sys.modules))")  # fmt: skip
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "  model: ease, ials, itemknn, mf, mlp, popularity, siamese, twotower" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_debug_tiny_checks_a_config_end_to_end_in_seconds(tmp_path: Path, data_cache: Path) -> None:
    """`python train.py debug=tiny`: the tests' tiny synthetic data, one epoch on the CPU, no logger."""
    run_dir = tmp_path / "run"
    proc = _run_train(["debug=tiny", "model=mf", f"hydra.run.dir={run_dir}"], tmp_path, {"RECARENA_DATA": str(data_cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["data"] == "synthetic" and result["dataset"]["users"] <= 120 and result["epochs"] == 1
    assert not (run_dir / "csv").exists()  # no logger
    assert f"run dir: {run_dir}" in proc.stdout


def test_debug_overfit_drives_the_training_loss_down_on_the_same_few_batches(make_cfg) -> None:
    """debug=overfit: the same batches every epoch (no reshuffle), no early stopping; MF's squared error on them
    falls far below where it started (with optimizer.lr=0 it would not move)."""
    cfg = make_cfg("debug=overfit", "model=mf", "trainer.max_epochs=25", "optimizer.lr=0.02", fast=False)
    assert cfg.shuffle is False and cfg.trainer.overfit_batches == 4 and cfg.callbacks.early_stopping is None
    result = train(cfg)
    assert result["epochs"] == 25
    log = pd.read_csv(Path(cfg.hydra.runtime.output_dir) / "csv" / "metrics.csv")
    losses = log["train/loss"].dropna().to_numpy()
    assert len(losses) == 25 and losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=no_such_model", "error: In 'train': Could not find 'model/no_such_model'; available options in "
                                "'model': ease, ials, itemknn, mf, mlp, popularity, siamese, twotower."),
        ("optimzer.lr=1", "error: Could not override 'optimzer.lr'. To append to your config use +optimzer.lr=1"),
    ],
)
def test_hydra_level_errors_are_one_line_and_exit_code_2(override: str, message: str, tmp_path: Path) -> None:
    proc = _run_train([override, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, {})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [message], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_cut_short_release_is_refused_naming_the_file(make_cfg, tmp_path: Path) -> None:
    """A torn last line (no line end) or a fixed release with fewer ratings than it has: one line, fetch again."""
    from recarena.errors import DataError
    from tests.data_factories import write_release

    root = write_release(tmp_path / "release", "ml-1m", n_users=40, n_items=30, n_ratings=600)
    with pytest.raises(DataError, match=r"ratings parsed, but ml-1m has 1,000,209: a file is cut short or altered"):
        train(make_cfg("data=ml-1m", f"data.root={root}", tiny=False))
    ratings = root / "ratings.dat"
    ratings.write_bytes(ratings.read_bytes()[:-7])  # killed mid-copy: the last line is torn
    with pytest.raises(DataError, match=rf"{ratings}: the last line has no line end, so the file looks cut short"):
        train(make_cfg("data=ml-1m", f"data.root={root}", "data.expected_ratings=null", tiny=False))


def test_bare_optimiser_steps_train_exactly_as_lightnings_wrapped_steps(make_cfg, monkeypatch) -> None:
    """A single-process float32 run steps the torch optimiser directly (no Lightning hook to call); it must give
    the same metrics, step count and checkpointed epoch as the wrapped path, which DDP and mixed precision take."""
    import recarena.models.base as base

    def run(bare: bool) -> dict:
        taken = []
        real = base.bare_steps_apply
        monkeypatch.setattr(base, "bare_steps_apply", lambda trainer: taken.append(bare and real(trainer)) or taken[-1])
        result = train(make_cfg("model=mf", "loss=bpr", "trainer.max_epochs=3", "scheduler=onecycle",
                                "callbacks.early_stopping.patience=10", "overwrite=true"))  # fmt: skip
        assert taken == [bare]
        return result

    bare, wrapped = run(True), run(False)
    assert bare["val"] == wrapped["val"] and bare["test"] == wrapped["test"]
    assert bare["best_epoch"] == wrapped["best_epoch"] and bare["epochs"] == wrapped["epochs"] == 3


@pytest.mark.slow
def test_compile_trains_the_same_model_through_compiled_graphs(make_cfg) -> None:
    """compile=true: the training step runs through graphs torch.compile built (dynamo compiled frames), and the
    model is the eager one up to float rounding."""
    import torch._dynamo

    eager = train(make_cfg())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train(make_cfg("compile=true", "overwrite=true"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    for name, value in eager["val"].items():
        assert compiled["val"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
