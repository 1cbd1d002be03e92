"""The export path of ``recarena recommend --user``: the same answer as the model path, without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recarena.checks import family_presets
from recarena.inference import load_run
from recarena.serving import EXPORT_DIR, recommend_from_export
from tests.conftest import Trained

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", ["mf", "twotower_logq", "siamese", "ials"])
def test_the_export_answers_as_the_model_does(trained: Trained, family: str) -> None:
    run_dir, _ = trained(family)
    assert (run_dir / EXPORT_DIR / "manifest.json").is_file()  # written at the end of training
    run = load_run(run_dir)
    for user_id in run.corpus.user_ids[np.unique(run.corpus.users[run.split.train])][:12]:
        fast, manifest = recommend_from_export(run_dir, int(user_id), k=7)
        slow = run.recommend(user=int(user_id), k=7)
        assert manifest["family"] == family_presets()[family][0]
        assert fast["movie_id"].tolist() == slow["movie_id"].tolist(), user_id
        assert fast["title"].tolist() == slow["title"].tolist() and fast["rank"].tolist() == list(range(1, 8))
        np.testing.assert_allclose(fast["score"], slow["score"], rtol=1e-5, atol=1e-6)


def test_no_answer_sends_the_command_down_the_model_path(trained: Trained, tmp_path: Path) -> None:
    run_dir, _ = trained("mf")
    assert recommend_from_export(run_dir, 10**9, k=5) is None  # unknown user: the model path words the error
    assert recommend_from_export(run_dir, 1, k=0) is None
    for family in ("mlp", "popularity"):  # no user/item vectors, no export
        assert recommend_from_export(trained(family)[0], 1, k=5) is None
    # A checkpoint newer than the export (e.g. retrained into the same dir) makes the export stale.
    copy = tmp_path / "run"
    subprocess.run(["cp", "-a", str(run_dir), str(copy)], check=True)  # -a keeps the mtimes
    user = int(load_run(copy).corpus.user_ids[0])
    assert recommend_from_export(copy, user, k=5) is not None
    os.utime(copy / "checkpoints" / "best.ckpt", ns=(1, 1))
    assert recommend_from_export(copy, user, k=5) is None


@pytest.mark.parametrize("command", ["recommend", "similar"])
def test_the_command_imports_no_torch_on_the_export_path(trained: Trained, command: str) -> None:
    run_dir, _ = trained("mf")
    corpus = load_run(run_dir).corpus
    which = ["--user", str(corpus.user_ids[0])] if command == "recommend" else ["--movie-id", str(corpus.item_ids[2])]
    code = (
        "import sys; from recarena.cli import main; "
        f"code = main([{command!r}, {str(run_dir)!r}, *{which!r}, '-k', '3', '--format', 'csv']); "
        "assert code == 0; assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "movie_id,title,year,genres,score,rank" and len(lines) == 4


def test_an_unknown_user_or_a_bad_k_is_refused_before_torch_is_imported(trained: Trained) -> None:
    run_dir, _ = trained("mf")
    for extra, message in ((["--user", str(10**9)], f"user {10**9} is not in the training data of"),
                           (["--user", "1", "-k", "0"], "k must be a positive integer")):  # fmt: skip
        code = (
            "import sys; from recarena.cli import main\n"
            f"try: main(['recommend', {str(run_dir)!r}, *{extra!r}])\n"
            "except SystemExit as e: assert e.code == 2, e.code\n"
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("family", ["mf", "twotower_logq", "siamese", "ials"])
def test_similar_from_the_export_answers_as_the_model_does(trained: Trained, family: str) -> None:
    from recarena.serving import similar_from_export

    run_dir, _ = trained(family)
    run = load_run(run_dir)
    if not run.model.compares_items():
        assert similar_from_export(run_dir, None, int(run.corpus.item_ids[0]), k=5) is None
        return
    for index in (0, 3, 11):
        movie_id = int(run.corpus.item_ids[index])
        fast, manifest = similar_from_export(run_dir, None, movie_id, k=6, min_ratings=2)
        slow = run.similar(movie_id=movie_id, k=6, min_ratings=2)
        assert fast["movie_id"].tolist() == slow["movie_id"].tolist(), (family, movie_id)
        np.testing.assert_allclose(fast["score"], slow["score"], rtol=1e-4, atol=1e-5)
    title = run.corpus.display_titles().iloc[3]
    assert similar_from_export(run_dir, title, None, k=4)[0]["movie_id"].tolist() == run.similar(title, k=4)[
        "movie_id"].tolist()  # fmt: skip


def test_both_paths_break_equal_scores_by_the_runs_seeded_order(trained: Trained, tmp_path: Path) -> None:
    """Every item scored alike (MF with zero item vectors, on both paths): the top 7 are the user's unseen movies in
    the run seed's tie order on the model path and on the export path, not the lowest item indices."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from recarena.evaluation.ranking import seeded_tie_rank

    run_dir = Path(shutil.copytree(trained("mf")[0], tmp_path / "run"))  # copy2 keeps the checkpoint's stamp
    run = load_run(run_dir)
    for table in (run.model.item_factors, run.model.item_bias):
        torch.nn.init.zeros_(table.weight)
    items_file = run_dir / EXPORT_DIR / "items.parquet"
    stat = items_file.stat()
    table = pq.read_table(items_file)
    column = table.schema.names.index("embedding")
    flat = pa.array(np.zeros(len(table) * table.schema.field("embedding").type.list_size, np.float32))
    zeros = pa.FixedSizeListArray.from_arrays(flat, table.schema.field("embedding").type.list_size)
    pq.write_table(table.set_column(column, "embedding", zeros), items_file)
    os.utime(items_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    user = int(run.corpus.user_ids[run.corpus.users[run.split.train][0]])
    seen = set(run.corpus.items[run.corpus.users == run.corpus.users[run.split.train][0]].tolist())
    order = [i for i in np.argsort(seeded_tie_rank(run.corpus.n_items, int(run.config.seed)).numpy()) if i not in seen]
    expected = run.corpus.item_ids[order[:7]].tolist()
    assert run.recommend(user=user, k=7)["movie_id"].tolist() == expected
    fast, _ = recommend_from_export(run_dir, user, k=7)
    assert fast["movie_id"].tolist() == expected != sorted(expected)
