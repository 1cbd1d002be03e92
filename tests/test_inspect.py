"""Looking into a trained run: evaluate reproduces metrics.json and moves as its settings say, explain writes a
sorted bias table and a PNG, export round-trips to the model's own vectors and scores; bad input gets one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from recarena import load_run
from recarena.checks import family_presets
from recarena.cli import main
from recarena.errors import RunError
from recarena.evaluation.ranking import seeded_tie_rank
from recarena.inspection import bias_table, evaluate, explain, export, item_pca, read_embeddings
from tests.conftest import Trained

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("family", ["mf", "popularity", "mlp", "twotower_logq"])
@pytest.mark.parametrize("part", ["test", "val"])
def test_evaluate_with_the_runs_settings_reproduces_metrics_json(trained: Trained, family: str, part: str) -> None:
    run_dir, _ = trained(family)
    saved = json.loads((run_dir / "metrics.json").read_text())[part]
    again = evaluate(load_run(run_dir), part=part)
    assert {f"{part}/{name}" for name in again} == set(saved)  # rmse/mae too, for the families that predict ratings
    for name, value in again.items():  # metrics.json went through float32 (Lightning's log)
        assert value == pytest.approx(saved[f"{part}/{name}"], rel=1e-6, abs=1e-7, nan_ok=True), name


def test_other_cutoffs_and_thresholds_move_the_metrics_as_they_should(trained: Trained) -> None:
    run = load_run(trained("mf")[0])
    every, three, five = (evaluate(run, ks=[50, 10, 5, 10], relevance_threshold=t) for t in (None, 3, 5))
    assert [k for k in (5, 10, 50) if f"recall@{k}" in every] == [5, 10, 50] and "recall@20" not in every
    # A lower threshold makes more held-out ratings relevant: as many users or more have one.
    assert every["users_ranked"] >= three["users_ranked"] >= five["users_ranked"] > 0
    assert every["users_ranked"] + every["users_skipped"] == three["users_ranked"] + three["users_skipped"]
    for metrics in (every, three, five):  # a longer list finds as much or more
        assert metrics["recall@50"] >= metrics["recall@10"] >= metrics["recall@5"]
        assert metrics["hit_rate@50"] >= metrics["hit_rate@10"] and metrics["coverage@50"] >= metrics["coverage@10"]
    # Precision counts hits over the same top-K lists: more relevant items can only add hits (same ranked users
    # or more, so compare sums over users).
    hits = {t: m["precision@10"] * m["users_ranked"] for t, m in ((None, every), (3, three), (5, five))}
    assert hits[None] >= hits[3] >= hits[5]
    assert every["rmse"] == three["rmse"]  # rating errors do not depend on ranking settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": []}, "at least one cut-off"),
        ({"ks": [10, 0]}, "positive integers, got 0"),
        ({"ks": [2.5]}, "positive integers, got 2.5"),
        ({"relevance_threshold": "high"}, "a number or None"),
        ({"relevance_threshold": float("nan")}, "a number or None"),
        ({"part": "train"}, "part must be one of val, test"),
    ],
)
def test_evaluate_refuses_bad_settings(trained: Trained, kwargs: dict, message: str) -> None:
    with pytest.raises(RunError, match=message):
        evaluate(load_run(trained("popularity")[0]), **kwargs)


# ----------------------------------------------------------------------------------------------- explain
def test_bias_table_is_the_models_biases_sorted(trained: Trained) -> None:
    run_dir, model = trained("mf")
    run = load_run(run_dir)
    table = bias_table(run, top=4, min_ratings=30)
    top, bottom = table[table["side"] == "top"], table[table["side"] == "bottom"]
    assert len(top) == len(bottom) == 4 and top["rank"].tolist() == [1, 2, 3, 4]
    assert top["bias"].is_monotonic_decreasing and bottom["bias"].is_monotonic_increasing
    assert (table["n_ratings"] >= 30).all()
    items = pd.Index(run.corpus.item_ids).get_indexer(table["movie_id"])
    np.testing.assert_array_equal(table["bias"].to_numpy(), model.item_bias.weight[items, 0].detach().numpy())
    eligible = model.item_bias.weight[:, 0].detach().numpy()[run.datamodule.item_popularity >= 30]
    assert top["bias"].iloc[0] == eligible.max() and bottom["bias"].iloc[0] == eligible.min()
    counts = np.bincount(run.corpus.items[run.split.train], minlength=run.corpus.n_items)
    np.testing.assert_array_equal(table["n_ratings"].to_numpy(), counts[items])


def test_explain_writes_a_png_and_skips_biases_a_family_lacks(trained: Trained, tmp_path: Path) -> None:
    result = explain(load_run(trained("mf")[0]), out=tmp_path / "mf", top=3, labels=5)
    png = (tmp_path / "mf" / "item_pca.png").read_bytes()
    assert result["pca"] == tmp_path / "mf" / "item_pca.png" and png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert len(result["biases"]) == 6 and 0 < sum(result["pca_variance"]) <= 1
    assert not [p for p in (tmp_path / "mf").iterdir() if p.name != "item_pca.png"]  # no temp file left behind
    result = explain(load_run(trained("mlp")[0]), out=tmp_path / "mlp")
    assert result["biases"] is None and (tmp_path / "mlp" / "item_pca.png").read_bytes().startswith(PNG_SIGNATURE)


def test_item_pca_projects_the_centred_item_vectors(trained: Trained) -> None:
    run_dir, model = trained("mf")
    frame, share = item_pca(load_run(run_dir), min_ratings=0)
    x = model.item_similarity_vectors().detach().double().numpy()
    x = x - x.mean(0)
    total = (x**2).sum()
    assert len(frame) == len(x) and frame["movie_id"].tolist() == load_run(run_dir).corpus.item_ids.tolist()
    coords = frame[["pc1", "pc2"]].to_numpy()
    np.testing.assert_allclose((coords**2).sum(0) / total, share, rtol=1e-9)  # variance shares of the projection
    assert share[0] >= share[1] and abs(coords[:, 0] @ coords[:, 1]) < 1e-9 * total  # ordered, orthogonal
    top = np.linalg.svd(x, compute_uv=False)[0] ** 2 / total
    assert share[0] == pytest.approx(top)  # the first component is the best direction


def test_explain_without_item_vectors_or_with_too_few_movies(trained: Trained) -> None:
    with pytest.raises(RunError, match="model=popularity has no item vectors to explain; .* mf, mlp"):
        explain(load_run(trained("popularity")[0]))
    with pytest.raises(RunError, match="lower min_ratings"):
        explain(load_run(trained("mf")[0]), min_ratings=10**6)


# ----------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize(
    ("family", "similarity"), [("mf", "dot"), ("twotower_logq", "cosine"), ("siamese", "dot"), ("ials", "dot")]
)
def test_export_round_trips_to_the_models_vectors_and_scores(
    trained: Trained, tmp_path: Path, family: str, similarity: str
) -> None:
    run_dir, model = trained(family)
    run = load_run(run_dir)
    manifest = export(run, out=tmp_path, chunk=7)  # 7 users per row group: the streaming path
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["family"] == family_presets()[family][0] and manifest["similarity"] == similarity
    users, user_vectors = read_embeddings(tmp_path / "users.parquet")
    items, item_vectors = read_embeddings(tmp_path / "items.parquet")
    assert pq.ParquetFile(tmp_path / "users.parquet").num_row_groups == -(-len(users) // 7)
    assert user_vectors.dtype == np.float32 and user_vectors.shape == (manifest["users"]["rows"], manifest["dim"])
    assert list(items.columns) == ["movie_id", "title", "year", "genres", "n_ratings", "tie_rank"]
    # The evaluator's order among equal scores, so the numpy serving path breaks ties as the metrics did.
    assert items["tie_rank"].tolist() == seeded_tie_rank(run.corpus.n_items, int(run.config.seed)).tolist()
    assert items["movie_id"].tolist() == run.corpus.item_ids.tolist() and item_vectors.shape[1] == manifest["dim"]
    # Every user with training ratings, by MovieLens id, with the model's own vectors.
    trained_users = np.unique(run.corpus.users[run.split.train])
    assert users["user_id"].tolist() == run.corpus.user_ids[trained_users].tolist()
    with torch.no_grad():
        index = torch.from_numpy(trained_users)
        # Equal up to float32 rounding: a two-tower's user vectors are computed 7 users at a time here.
        np.testing.assert_allclose(user_vectors, model.user_embeddings(index).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(item_vectors, model.item_embeddings().numpy())
        expected = model.score_all(index).numpy()
    u, v = torch.from_numpy(user_vectors.copy()), torch.from_numpy(item_vectors.copy())  # read_embeddings: read-only
    if similarity == "cosine":  # the manifest's rule: L2-normalise both, then the inner product
        u, v = torch.nn.functional.normalize(u, dim=-1), torch.nn.functional.normalize(v, dim=-1)
    np.testing.assert_allclose((u @ v.T).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_export_of_a_family_without_embeddings_names_those_with(trained: Trained, tmp_path: Path) -> None:
    for family in ("mlp", "popularity"):
        message = f"model={family} has no user and item embeddings to export; .* runs of .*mf, .*twotower"
        with pytest.raises(RunError, match=message):
            export(load_run(trained(family)[0]), out=tmp_path)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------- command line
def test_cli_evaluate_explain_export(trained: Trained, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_dir, _ = trained("mf")
    assert main(["evaluate", str(run_dir), "--ks", "5", "10", "50", "--threshold", "3"]) == 0
    table = capsys.readouterr().out
    assert "recall" in table and "@50" in table and "rating >= 3" in table and "rmse" in table
    assert main(["evaluate", str(run_dir), "--ks", "5", "--threshold", "none", "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ks"] == [5] and payload["relevance_threshold"] is None and payload["part"] == "test"
    assert payload["metrics"] == evaluate(load_run(run_dir), ks=[5], relevance_threshold=None)
    assert main(["evaluate", str(run_dir), "--part", "val", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    saved = json.loads((run_dir / "metrics.json").read_text())["val"]
    assert frame.set_index("metric")["value"].to_dict() == pytest.approx({k[4:]: v for k, v in saved.items()})

    assert main(["explain", str(run_dir), "--top", "3", "--out", str(tmp_path / "explain")]) == 0
    out = capsys.readouterr().out
    assert "liked most whoever rates them" in out and "item_pca.png" in out
    assert (tmp_path / "explain" / "item_pca.png").read_bytes().startswith(PNG_SIGNATURE)
    assert main(["explain", str(run_dir), "--top", "2", "--format", "csv", "--out", str(tmp_path / "explain")]) == 0
    assert pd.read_csv(io.StringIO(capsys.readouterr().out))["side"].tolist() == ["top", "top", "bottom", "bottom"]

    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    assert "users.parquet" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"users.parquet", "items.parquet", "manifest.json"}


@pytest.mark.parametrize(
    ("family", "args", "message"),
    [
        ("mf", ["evaluate", "{run}/nowhere"], "error: {run}/nowhere is not a run dir"),
        ("mf", ["evaluate", "{run}", "--ks", "10", "0"], "error: cut-offs K must be positive integers, got 0"),
        ("mf", ["evaluate", "{run}", "--ks"], "error: give at least one cut-off K"),
        ("mf", ["evaluate", "{run}", "--ks", "ten"], "error: cut-off K must be an integer, got 'ten'"),
        ("mf", ["evaluate", "{run}", "--threshold", "high"], "error: --threshold must be a number, got 'high'"),
        ("mlp", ["export", "{run}"], "error: model=mlp has no user and item embeddings to export"),
        ("popularity", ["explain", "{run}"], "error: model=popularity has no item vectors to explain"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(
    trained: Trained, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, family: str,
    args: list[str], message: str,
) -> None:  # fmt: skip
    monkeypatch.delenv("RECARENA_DEBUG", raising=False)
    run_dir, _ = trained(family)
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(run=run_dir) for a in args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message.format(run=run_dir)) and captured.err.count("\n") == 1 and not captured.out
    with pytest.raises(RunError):  # --debug: the exception itself
        main([*(a.format(run=run_dir) for a in args), "--debug"])


def test_help_stays_free_of_torch() -> None:
    code = "import sys, recarena.commands.inspect as c; c._parser(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
