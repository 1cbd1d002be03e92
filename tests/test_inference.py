"""Using a trained run: the run dir is self-contained, load_run rebuilds the trained model exactly, recommend and
similar answer from it, bad input gets one clear line (API and CLI)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import recarena.run as run_module
from recarena import load_run
from recarena.checks import family_presets
from recarena.cli import main
from recarena.data.corpus import Corpus
from recarena.errors import RunError
from recarena.inference import Run
from recarena.rundir import RUN_FORMAT_VERSION
from recarena.titles import resolve_movie
from tests.conftest import FAMILIES, FAST, TINY_DATA, Trained, compose_config


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def _seen(run: Run, user_id: int) -> set[int]:
    """Movie ids of every rating of the user in the saved corpus (train, val, test)."""
    c = run.corpus
    user = int(np.flatnonzero(c.user_ids == user_id)[0])
    return set(c.item_ids[c.items[c.users == user]].tolist())


# ----------------------------------------------------------------------------------------------- the run dir
def test_run_dir_holds_what_loading_needs(trained: Trained) -> None:
    run_dir, model = trained("mf")
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["format_version"] == RUN_FORMAT_VERSION and meta["model"] == "mf" and meta["recarena_version"]
    assert meta["schema"] == model.schema.to_dict()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "data" / "split.npz").is_file()
    corpus = Corpus.load(run_dir / "data" / "corpus")
    assert corpus.n_users == model.schema.n_users and corpus.n_items == model.schema.n_items
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split_fingerprint"] == meta["split_fingerprint"]


def test_loading_reads_the_run_dir_not_the_data_cache(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, _ = trained("mf")
    monkeypatch.setenv("RECARENA_DATA", "/nonexistent")

    def no_cache(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_run touched the data cache")

    monkeypatch.setattr("recarena.data.datamodule.load_corpus", no_cache)
    monkeypatch.setattr("recarena.data.datamodule.load_or_make_split", no_cache)
    assert len(load_run(run_dir).recommend(user=int(load_run(run_dir).corpus.user_ids[0]), k=3)) == 3


def test_loading_a_siamese_run_mines_no_triplets(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring needs descriptors and profiles only; mining (~40 s at 25M ratings) is for training and the AUCs."""
    run_dir, _ = trained("siamese")

    def no_mining(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_run mined triplets")

    monkeypatch.setattr("recarena.data.triplets.mine_triplets", no_mining)
    run = load_run(run_dir)
    assert len(run.recommend(user=int(run.corpus.user_ids[0]), k=3)) == 3
    assert len(run.similar(movie_id=int(run.corpus.item_ids[0]), k=3)) == 3


# ------------------------------------------------------------------------------------- loading reproduces
@pytest.mark.parametrize("family", list(FAMILIES))
def test_recommend_reproduces_the_trained_model(trained: Trained, family: str) -> None:
    run_dir, model = trained(family)
    run = load_run(run_dir)
    assert run.family == family_presets()[family][0] and not run.model.training
    user_id = int(run.corpus.user_ids[3])
    frame = run.recommend(user=user_id, k=5)
    assert list(frame.columns) == ["movie_id", "title", "year", "genres", "score", "rank"]
    assert len(frame) == 5 and frame["movie_id"].is_unique and frame["rank"].tolist() == [1, 2, 3, 4, 5]
    assert not set(frame["movie_id"]) & _seen(run, user_id)  # nothing the user rated, in any part of the split
    assert frame["score"].is_monotonic_decreasing
    with torch.no_grad():
        users = torch.arange(run.corpus.n_users)
        loaded, original = run.model.score_all(users), model.score_all(users)
        torch.testing.assert_close(loaded, original, rtol=0, atol=0)  # the same model, every user and item
        one_user = model.score_all(torch.tensor([3]))[0]  # a batch of one, as recommend(user=) scores
    items = pd.Index(run.corpus.item_ids).get_indexer(frame["movie_id"])
    np.testing.assert_array_equal(frame["score"].to_numpy(), one_user[items].numpy())
    others = np.ones(run.corpus.n_items, dtype=bool)
    others[items] = False
    others[pd.Index(run.corpus.item_ids).get_indexer(list(_seen(run, user_id)))] = False
    assert frame["score"].min() >= one_user[torch.from_numpy(others)].max()  # no unseen item scores higher


@pytest.mark.parametrize("family", ["mf", "siamese"])
def test_recommend_for_many_users_agrees_with_single_calls(trained: Trained, family: str) -> None:
    run = load_run(trained(family)[0])
    run.config.eval.user_chunk = 7  # several chunks
    every = run.recommend(users=None, k=4)
    assert list(every.columns) == ["user_id", "rank", "movie_id", "score"]
    train_users = np.unique(run.corpus.user_ids[run.corpus.users[run.split.train]])
    np.testing.assert_array_equal(np.unique(every["user_id"]), train_users)
    for user_id in train_users[[0, 5, -1]]:
        one = run.recommend(user=int(user_id), k=4)
        mine = every[every["user_id"] == user_id]
        assert mine["movie_id"].tolist() == one["movie_id"].tolist() and mine["rank"].tolist() == [1, 2, 3, 4]
        np.testing.assert_allclose(mine["score"].to_numpy(), one["score"].to_numpy(), rtol=1e-6)
    some = run.recommend(users=[int(train_users[5]), int(train_users[0])], k=4)
    assert some["user_id"].tolist() == [train_users[5]] * 4 + [train_users[0]] * 4


def test_a_gpu_trained_checkpoint_loads_on_the_cpu(trained: Trained, tmp_path: Path) -> None:
    """Re-save the checkpoint with every storage tagged ``cuda:0``, as a GPU-trained one is: torch.load without
    map_location fails on a CPU-only machine; load_run maps it onto the CPU."""
    run_dir = _copy(trained("mf")[0], tmp_path)
    path = run_dir / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)

    def on_gpu(storage: object) -> str | None:
        return "cuda:0" if storage.device.type == "cpu" else None

    torch.serialization.register_package(0, on_gpu, lambda obj, location: None)
    try:
        torch.save(checkpoint, path)
    finally:
        torch.serialization._package_registry[:] = [p for p in torch.serialization._package_registry if p[1] is not on_gpu]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    run = load_run(run_dir)
    assert run.model.user_factors.weight.device.type == "cpu"
    assert run.recommend(user=int(run.corpus.user_ids[0]), k=3)["movie_id"].tolist() == (
        load_run(trained("mf")[0]).recommend(user=int(run.corpus.user_ids[0]), k=3)["movie_id"].tolist()
    )


# ------------------------------------------------------------------------------------------ similar movies
def test_similar_is_the_cosine_of_the_item_factors(trained: Trained) -> None:
    run = load_run(trained("mf")[0])
    vectors = run.model.item_factors.weight.detach().numpy().astype(np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query, counts = 4, run.datamodule.item_popularity
    cosine = unit @ unit[query]
    title = run.corpus.display_titles().iloc[query]
    for min_ratings in (0, int(np.median(counts))):
        candidates = np.flatnonzero((counts >= min_ratings) & (np.arange(len(counts)) != query))
        expected = candidates[np.argsort(-cosine[candidates], kind="stable")[:6]]
        frame = run.similar(title, k=6, min_ratings=min_ratings)
        assert frame["movie_id"].tolist() == run.corpus.item_ids[expected].tolist()
        np.testing.assert_allclose(frame["score"].to_numpy(), cosine[expected], rtol=1e-5)
        assert run.corpus.item_ids[query] not in set(frame["movie_id"])
    by_id = run.similar(movie_id=int(run.corpus.item_ids[query]), k=6)
    assert by_id["movie_id"].tolist() == run.similar(title.upper(), k=6)["movie_id"].tolist()


@pytest.mark.parametrize("family", ["mlp", "twotower_logq", "siamese", "ials"])
def test_similar_works_for_families_with_item_vectors(trained: Trained, family: str) -> None:
    run = load_run(trained(family)[0])
    frame = run.similar(movie_id=int(run.corpus.item_ids[0]), k=5)
    assert len(frame) == 5 and frame["score"].between(-1 - 1e-6, 1 + 1e-6).all()


@pytest.mark.parametrize("family", ["ease", "itemknn"])
def test_similar_of_neighbourhood_families_ranks_by_their_item_item_weights(trained: Trained, family: str) -> None:
    run = load_run(trained(family)[0])
    query = int(np.argmax(run.datamodule.item_popularity))  # a well-liked movie has neighbours
    frame = run.similar(movie_id=int(run.corpus.item_ids[query]), k=5)
    with torch.no_grad():
        weights = run.model.similar_items(query).numpy()
    weights[query] = -np.inf
    items = pd.Index(run.corpus.item_ids).get_indexer(frame["movie_id"])
    assert items[0] == int(np.argmax(weights)) and frame["score"].is_monotonic_decreasing
    np.testing.assert_allclose(frame["score"].to_numpy(), weights[items], rtol=1e-6)


def test_similar_without_item_embeddings_names_the_families_that_can(trained: Trained) -> None:
    run = load_run(trained("popularity")[0])
    with pytest.raises(RunError, match=r"model=popularity has no item embeddings.*runs of .*mf.*siamese"):
        run.similar(movie_id=int(run.corpus.item_ids[0]))


# ----------------------------------------------------------------------------------------------- bad input
def test_unknown_user_and_bad_k(trained: Trained) -> None:
    run_dir, _ = trained("mf")
    run = load_run(run_dir)
    lo, hi = run.corpus.user_ids.min(), run.corpus.user_ids.max()
    with pytest.raises(RunError, match=rf"user 99999 is not in the training data of {run_dir} \(ids run from {lo} to {hi}\)"):
        run.recommend(user=99999)
    with pytest.raises(RunError, match="user 99999"):
        run.recommend(users=[int(lo), 99999])
    for k in (0, -3):
        with pytest.raises(RunError, match="k must be a positive integer"):
            run.recommend(user=int(lo), k=k)
        with pytest.raises(RunError, match="k must be a positive integer"):
            run.similar(movie_id=int(run.corpus.item_ids[0]), k=k)
    with pytest.raises(RunError, match="give one of user="):
        run.recommend()


def test_titles_resolve_case_insensitively_or_say_what_was_meant(trained: Trained) -> None:
    run = load_run(trained("mf")[0])
    corpus = run.corpus
    title = corpus.display_titles().iloc[7]  # "Synthetic Movie 8 (1987)"
    items = corpus.item_table
    assert resolve_movie(items, title.lower()) == 7 and resolve_movie(items, f"  {title.upper()} ") == 7
    assert resolve_movie(items, movie_id=int(corpus.item_ids[7])) == 7
    with pytest.raises(RunError, match=rf'no movie titled .*; did you mean: "{title[:-7]}.*"'):
        run.similar(title.replace("(", "(1"), k=3)
    with pytest.raises(RunError, match="movie id 999999 is not in the catalogue"):
        run.similar(movie_id=999999)
    # Two movies with the same "Title (Year)" (ML-100K has 18): both listed with their ids.
    corpus.item_table.loc[8, ["title", "year"]] = corpus.item_table.loc[7, ["title", "year"]].to_numpy()
    ids = corpus.item_ids
    with pytest.raises(RunError, match=rf"matches 2 movies.*\(id {ids[7]}\); .*\(id {ids[8]}\); pick one by its id \(--movie-id ID"):
        run.similar(title)


def test_a_run_dir_without_checkpoint_or_of_a_future_format(trained: Trained, tmp_path: Path) -> None:
    run_dir = _copy(trained("mf")[0], tmp_path)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "format_version": RUN_FORMAT_VERSION + 1}))
    message = (rf"{run_dir} was written by an incompatible recarena \(run format {RUN_FORMAT_VERSION + 1}, this "
               rf"version reads {RUN_FORMAT_VERSION}\): retrain or install the matching version")  # fmt: skip
    with pytest.raises(RunError, match=message):
        load_run(run_dir)
    (run_dir / "run.json").unlink()
    with pytest.raises(RunError, match=r"run format none.*save_run_data=false"):
        load_run(run_dir)
    (run_dir / "run.json").write_text(json.dumps(meta))
    shutil.rmtree(run_dir / "checkpoints")
    with pytest.raises(RunError, match=rf"{run_dir} has no checkpoint \(checkpoints/best.ckpt or checkpoints/last.ckpt\)"):
        load_run(run_dir)
    with pytest.raises(RunError, match="not a run dir"):
        load_run(tmp_path)


def test_last_checkpoint_is_the_fallback(trained: Trained, tmp_path: Path) -> None:
    run_dir = _copy(trained("mf")[0], tmp_path)
    (run_dir / "checkpoints" / "best.ckpt").unlink()
    assert len(load_run(run_dir).recommend(user=int(load_run(trained("mf")[0]).corpus.user_ids[0]), k=2)) == 2


def test_popularity_needs_no_checkpoint(trained: Trained) -> None:
    run_dir, _ = trained("popularity")
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()
    run = load_run(run_dir)
    frame = run.recommend(user=int(run.corpus.user_ids[0]), k=3)
    counts = run.datamodule.item_popularity[pd.Index(run.corpus.item_ids).get_indexer(frame["movie_id"])]
    np.testing.assert_array_equal(frame["score"].to_numpy(), counts)


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_recommend_and_similar_in_every_format(trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = trained("mf")
    run = load_run(run_dir)
    user_id = str(run.corpus.user_ids[2])
    expected = run.recommend(user=int(user_id), k=4)
    assert main(["recommend", str(run_dir), "--user", user_id, "-k", "4"]) == 0
    table = capsys.readouterr().out
    assert f"top 4 for user {user_id}" in table and all(str(m) in table for m in expected["movie_id"])
    assert main(["recommend", str(run_dir), "--user", user_id, "-k", "4", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["movie_id"] for r in records] == expected["movie_id"].tolist()
    assert set(records[0]) == {"movie_id", "title", "year", "genres", "score", "rank"}
    title = run.corpus.display_titles().iloc[5]
    assert main(["similar", str(run_dir), title, "-k", "3", "--min-ratings", "2", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert frame["movie_id"].tolist() == run.similar(title, k=3, min_ratings=2)["movie_id"].tolist()
    assert main(["similar", str(run_dir), "--movie-id", str(run.corpus.item_ids[5]), "-k", "3"]) == 0
    assert "nearest to movie id" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["recommend", "{run}", "--user", "99999"], "error: user 99999 is not in the training data"),
        (["recommend", "{run}", "--user", "{user}", "-k", "0"], "error: k must be a positive integer"),
        (["similar", "{run}", "No Such Movie (1900)"], "error: no movie titled 'No Such Movie (1900)'"),
        (["recommend", "{run}/checkpoints", "--user", "1"], "error: "),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(
    trained: Trained, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.delenv("RECARENA_DEBUG", raising=False)
    run_dir, model = trained("mf")
    user = str(load_run(run_dir).corpus.user_ids[0])
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(run=run_dir, user=user) for a in args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1 and not captured.out
    with pytest.raises(RunError):  # --debug: the exception itself
        main([*(a.format(run=run_dir, user=user) for a in args), "--debug"])


def test_held_out_users_of_split_users_are_recommended_from_their_known_ratings(
    data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECARENA_DATA", str(data_cache))
    run_module.train(compose_config([*TINY_DATA, *FAST, "model=twotower", "split=users"], tmp_path / "run"))
    run = load_run(tmp_path / "run")
    held_out = np.setdiff1d(run.corpus.users[run.split.known], run.corpus.users[run.split.train])
    user_id = int(run.corpus.user_ids[held_out[0]])
    frame = run.recommend(user=user_id, k=5)
    assert len(frame) == 5 and not set(frame["movie_id"]) & _seen(run, user_id)
    every = run.recommend(users=None, k=1)  # users with training ratings only
    assert user_id not in set(every["user_id"])


def test_import_and_help_stay_free_of_torch() -> None:
    """``import recarena`` and parsing a command's arguments import no torch: ``recarena --help`` answers at once."""
    code = ("import sys, recarena, recarena.cli, recarena.commands.use as use; use._parser(); "
            "assert callable(recarena.__getattr__); sys.exit('torch' in sys.modules)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("family", ["mf", "mf_bpr"])
def test_predict_is_the_rating_where_the_family_predicts_ratings_else_the_ranking_score(
    trained: Trained, family: str
) -> None:
    run = load_run(trained(family)[0])
    user = int(run.corpus.user_ids[run.corpus.users[run.split.train][0]])
    top = run.recommend(user=user, k=3)
    movie = f"{top['title'][0]} ({top['year'][0]})" if pd.notna(top["year"][0]) else top["title"][0]
    value = run.predict(user, movie_id=int(top["movie_id"][0]))
    if family == "mf":  # trained on ratings: a rating on the scale, the model's own forward pass, clipped
        assert run.model.predicts_ratings
        low, high = run.corpus.scale.low, run.corpus.scale.high
        index, item = run.user_indices([user]), np.flatnonzero(run.corpus.item_ids == int(top["movie_id"][0]))
        expected = float(run.model(torch.as_tensor(index), torch.as_tensor(item)).clamp(low, high)[0])
        assert low <= value <= high and value == pytest.approx(expected, rel=1e-6)
    else:  # ranked by BPR: the score recommend ordered by
        assert not run.model.predicts_ratings and value == pytest.approx(float(top["score"][0]), rel=1e-5)
    assert run.predict(user, movie) == pytest.approx(value, rel=1e-6)
    with pytest.raises(RunError, match="no movie titled"):
        run.predict(user, "No Such Movie (1900)")
