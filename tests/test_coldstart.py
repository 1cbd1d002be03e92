"""Made-up (cold-start) users and keyword search on trained runs: ``run.recommend(liked=..., likes_genre=...)``,
``run.search([...])`` and their commands. The runs are the session's tiny trained runs (``trained`` in conftest)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from recarena import load_run
from recarena.cli import main
from recarena.errors import RunError
from recarena.inference import ITEM_COLUMNS, Run
from tests.conftest import Trained

MADE_UP = ("twotower_logq", "siamese")


def _input_ratings(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's input ratings (training + known rows) as ragged lists, oldest first: (ptr, items, ratings)."""
    c = run.corpus
    rows = np.concatenate([run.split.train, run.split.known])
    rows = rows[np.lexsort((rows, c.timestamps[rows], c.users[rows]))]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(c.users[rows], minlength=c.n_users))])
    return ptr, c.items[rows].astype(np.int64), c.ratings[rows]


def _mean_rank(frame: pd.DataFrame, movie_ids: np.ndarray) -> float:
    return float(frame.loc[frame["movie_id"].isin(movie_ids), "rank"].mean())


def _liked(run: Run, n: int = 2) -> list[str]:
    return run.corpus.display_titles().iloc[:n].tolist()


# ------------------------------------------------------------------------------------------- made-up users
@pytest.mark.parametrize("family", MADE_UP)
def test_a_made_up_user_gets_k_movies_they_did_not_like(trained: Trained, family: str) -> None:
    run = load_run(trained(family)[0])
    titles = _liked(run, 3)
    extra = int(run.corpus.item_ids[5])
    frame = run.recommend(liked=titles, liked_ids=[extra], likes_genre=["animation"], dislikes_genre=["Horror"], k=7)
    assert list(frame.columns) == [*ITEM_COLUMNS, "score", "rank"] == list(run.recommend(user=int(run.corpus.user_ids[0])).columns)
    assert len(frame) == 7 and frame["movie_id"].is_unique and frame["rank"].tolist() == list(range(1, 8))
    liked_ids = {*run.corpus.item_ids[:3].tolist(), extra}
    assert not liked_ids & set(frame["movie_id"]) and frame["score"].is_monotonic_decreasing
    everything = run.recommend(liked=titles, liked_ids=[extra], k=run.corpus.n_items)
    assert len(everything) == run.corpus.n_items - 4 and not liked_ids & set(everything["movie_id"])


@pytest.mark.parametrize("family", MADE_UP)
def test_a_users_own_ratings_through_the_made_up_path_give_their_vector(trained: Trained, family: str) -> None:
    """Training users fed back as ad-hoc rating lists (all users at once) get exactly their evaluation vectors:
    made-up users go through the same tables, weights and towers."""
    run = load_run(trained(family)[0])
    ptr, items, ratings = _input_ratings(run)
    assert np.diff(ptr).max() >= 32  # past one block of the two-tower's prefix-sum snapshots
    with torch.no_grad():
        ad_hoc = run.model.rated_user_embeddings(ptr, items, ratings)
        stored = run.model.user_embeddings(torch.arange(run.corpus.n_users))
    torch.testing.assert_close(ad_hoc, stored)


def test_twotower_made_up_inputs_are_the_documented_ones(trained: Trained) -> None:
    """One liked movie, a liked and a disliked genre: the user tower's input is x_ctx = r_high - m on the movie,
    x_genre = r_high - m on its genres and the liked genre, r_low - m on the disliked one, the history that movie."""
    run = load_run(trained("twotower_logq")[0])
    model, corpus = run.model, run.corpus
    movie = 0
    own = set(np.flatnonzero(corpus.genres[movie]).tolist())
    liked_genre, disliked_genre = [g for g in range(len(corpus.genre_names)) if g not in own][:2]
    seen: list[torch.Tensor] = []
    hook = model.user_tower.layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        run.recommend(liked_ids=[int(corpus.item_ids[movie])], likes_genre=[corpus.genre_names[liked_genre]],
                      dislikes_genre=[corpus.genre_names[disliked_genre]], k=3)  # fmt: skip
    finally:
        hook.remove()
    high, low = model.schema.rating_high, model.schema.rating_low
    mean = (high + model.mean_shrinkage * model.lookup.global_mean) / (1 + model.mean_shrinkage)
    n_ctx, n_genres = model.user_tower.n_context, len(corpus.genre_names)
    x = seen[0][0]  # (N + G + history width,)
    x_ctx, x_genre, history = x[:n_ctx], x[n_ctx : n_ctx + n_genres], x[n_ctx + n_genres :]
    expected_ctx = torch.zeros(n_ctx)
    expected_ctx[model.lookup.ctx_of_item[movie]] = high - mean
    expected_genre = torch.zeros(n_genres)
    expected_genre[sorted(own) + [liked_genre]] = high - mean
    expected_genre[disliked_genre] = low - mean
    torch.testing.assert_close(x_ctx, expected_ctx)
    torch.testing.assert_close(x_genre, expected_genre)
    with torch.no_grad():  # the mean of the movie's history row and the learnt "no history" vector
        expected_history = (model.user_tower.history(torch.tensor(movie)) + model.user_tower.no_history) / 2
    torch.testing.assert_close(history, expected_history)


def test_twotower_stating_the_liked_movies_own_genres_changes_nothing(trained: Trained) -> None:
    """A liked movie's genres already have the top rating as their mean: liking them again is the same user."""
    run = load_run(trained("twotower_logq")[0])
    genres = [run.corpus.genre_names[g] for g in np.flatnonzero(run.corpus.genres[0])]
    alone = run.recommend(liked=_liked(run, 1), k=10)
    pd.testing.assert_frame_equal(alone, run.recommend(liked=_liked(run, 1), likes_genre=genres, k=10))
    assert not alone.equals(run.recommend(liked=_liked(run, 1), dislikes_genre=genres, k=10))


def test_siamese_made_up_user_is_the_mean_of_liked_movies_and_genre_descriptors(trained: Trained) -> None:
    run = load_run(trained("siamese")[0])
    model, corpus = run.model, run.corpus
    genre = int(np.argmax(corpus.genres.sum(0)))  # the commonest genre
    with torch.no_grad():
        items = model.item_similarity_vectors()  # (n_items, D) unit
        column = model.vocabulary.index(corpus.genre_names[genre].lower())
        descriptor = model.embed_descriptors(torch.tensor([column]), torch.tensor([0]))[0]
    user = torch.nn.functional.normalize(items[0] + items[1] + descriptor, dim=0)
    frame = run.recommend(liked=_liked(run, 2), likes_genre=[corpus.genre_names[genre]], k=5)
    index = pd.Index(corpus.item_ids).get_indexer(frame["movie_id"])
    np.testing.assert_allclose(frame["score"].to_numpy(), (items[index] @ user).numpy(), rtol=1e-5, atol=1e-6)


def test_siamese_leaves_out_disliked_genres(trained: Trained) -> None:
    run = load_run(trained("siamese")[0])
    corpus = run.corpus
    disliked = [corpus.genre_names[g] for g in np.argsort(-corpus.genres.sum(0))[:2]]  # the two commonest
    frame = run.recommend(liked=_liked(run), dislikes_genre=disliked, k=corpus.n_items)
    columns = [corpus.genre_names.index(g) for g in disliked]
    allowed = ~corpus.genres[:, columns].any(1)
    allowed[:2] = False  # the liked movies
    assert set(frame["movie_id"]) == set(corpus.item_ids[allowed])


def test_liking_a_genre_moves_its_movies_up(trained: Trained) -> None:
    """Behavioural (siamese): for every genre, liking it lowers the mean rank of its movies (unless they already
    hold the first ranks)."""
    run = load_run(trained("siamese")[0])
    corpus, liked = run.corpus, _liked(run)
    base = run.recommend(liked=liked, k=corpus.n_items)
    for g, name in enumerate(corpus.genre_names):
        movies = corpus.item_ids[2:][corpus.genres[2:, g] > 0]  # not the liked movies 0 and 1
        before = _mean_rank(base, movies)
        if len(movies) and before > (len(movies) + 1) / 2:
            after = _mean_rank(run.recommend(liked=liked, likes_genre=[name], k=corpus.n_items), movies)
            assert after < before, name


def test_families_without_made_up_users_name_the_ones_with(trained: Trained) -> None:
    run = load_run(trained("mf")[0])
    message = "model=mf scores only users seen in training; made-up users work with: siamese, twotower"
    with pytest.raises(RunError, match=f"^{message}$"):
        run.recommend(liked=_liked(run))


def test_made_up_user_bad_input(trained: Trained) -> None:
    run = load_run(trained("twotower_logq")[0])
    liked = _liked(run, 1)
    genres = ", ".join(run.corpus.genre_names)
    with pytest.raises(RunError, match=rf"^unknown genre 'Horor'; did you mean Horror\? the genres of .*: {genres}$"):
        run.recommend(liked=liked, likes_genre=["Horor"])
    with pytest.raises(RunError, match=r"^unknown genre 'Cartoons'; the genres of"):
        run.recommend(liked=liked, dislikes_genre=["Cartoons"])
    with pytest.raises(RunError, match="genre Drama is both liked and disliked"):
        run.recommend(liked=liked, likes_genre=["drama"], dislikes_genre=["Drama"])
    with pytest.raises(RunError, match="no movie titled 'No Such Movie'"):
        run.recommend(liked=[*liked, "No Such Movie"])
    with pytest.raises(RunError, match="movie id 999999 is not in the catalogue"):
        run.recommend(liked_ids=[999999])
    with pytest.raises(RunError, match=r"needs at least one liked movie .* or genre"):
        run.recommend(dislikes_genre=["Drama"])
    with pytest.raises(RunError, match=r"give one of user=ID .* or a made-up user"):
        run.recommend(user=int(run.corpus.user_ids[0]), liked=liked)
    with pytest.raises(RunError, match="k must be a positive integer"):
        run.recommend(liked=liked, k=0)
    title = run.corpus.display_titles().iloc[7]  # two movies with this "Title (Year)": both listed with their ids
    run.corpus.item_table.loc[8, ["title", "year"]] = run.corpus.item_table.loc[7, ["title", "year"]].to_numpy()
    ids = run.corpus.item_ids
    with pytest.raises(RunError, match=rf"matches 2 movies.*\(id {ids[7]}\); .*\(id {ids[8]}\); pick one by its id "
                                       r"\(--liked-id ID, or liked_ids=\[ID\]\)"):  # fmt: skip
        run.recommend(liked=[title])


# --------------------------------------------------------------------------------------------------- search
def test_search_ranks_movies_with_exactly_those_descriptors_first(trained: Trained) -> None:
    """Without item-id rows a movie is its descriptors alone, so a query of one movie's descriptors scores cosine 1
    with every movie that has exactly those descriptors, and they come first (checked for every movie)."""
    run = load_run(trained("siamese-no-ids")[0])
    model, n = run.model, run.corpus.n_items
    ptr, index = model.desc_indptr.numpy(), model.desc_index.numpy()
    sets = [frozenset(index[ptr[i] : ptr[i + 1]].tolist()) for i in range(n)]
    for i in range(n):
        words = [model.vocabulary[j].upper() for j in sets[i]]  # case-insensitive
        frame = run.search(words, k=n)
        exact = {int(run.corpus.item_ids[j]) for j in range(n) if sets[j] == sets[i]}
        assert set(frame["movie_id"][: len(exact)]) == exact
        np.testing.assert_allclose(frame["score"][: len(exact)], 1.0, rtol=1e-5)
        assert frame["score"].is_monotonic_decreasing and len(frame) == n
        assert list(frame.columns) == [*ITEM_COLUMNS, "score", "rank"]


def test_search_reads_free_text_and_multi_word_descriptors(trained: Trained) -> None:
    run = load_run(trained("siamese")[0])
    phrase = next(v for v in run.model.vocabulary if " " in v)  # e.g. "twist ending"
    word = next(v for v in run.model.vocabulary if " " not in v and v not in phrase)
    frame = run.search(f"  {phrase.upper()}   {word} ", k=4)
    assert frame.attrs["descriptors"] == [phrase, word]
    assert frame["movie_id"].tolist() == run.search([word, *phrase.split()], k=4)["movie_id"].tolist()


def test_search_bad_input(trained: Trained) -> None:
    run = load_run(trained("siamese")[0])
    word = next(v for v in run.model.vocabulary if len(v) >= 6 and v.isalpha())
    with pytest.raises(RunError, match=rf"^'{word[:-1]}' is not a descriptor of .*; did you mean: .*'{word}'"):
        run.search([word, word[:-1]])
    with pytest.raises(RunError, match=r"^'qqqzzz' is not a descriptor .*; the most common are '"):
        run.search("qqqzzz")
    with pytest.raises(RunError, match="give at least one keyword"):
        run.search("   ")
    with pytest.raises(RunError, match="k must be a positive integer"):
        run.search([word], k=0)
    mf = load_run(trained("mf")[0])
    with pytest.raises(RunError, match="^model=mf has no descriptor encoder to search with; search.. works with runs of siamese$"):
        mf.search([word])


def test_search_with_the_text_encoder_reads_unknown_words_as_their_nearest_descriptor(trained: Trained) -> None:
    run = load_run(trained("siamese-text")[0])
    frame = run.search(["warfare", "drama"], k=5)
    assert frame.attrs["descriptors"] == ["warfare -> war", "drama"]
    assert frame["movie_id"].tolist() == run.search("war drama", k=5)["movie_id"].tolist()


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_made_up_user_and_search(trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = trained("siamese")[0]
    run = load_run(run_dir)
    title, movie_id = run.corpus.display_titles().iloc[0], str(run.corpus.item_ids[1])
    made_up = ["--liked", title, "--liked-id", movie_id, "--likes-genre", "Drama", "--dislikes-genre", "horror"]
    expected = run.recommend(liked=[title], liked_ids=[int(movie_id)], likes_genre=["Drama"], dislikes_genre=["horror"], k=4)
    assert main(["recommend", str(run_dir), *made_up, "-k", "4", "--format", "json"]) == 0
    assert [r["movie_id"] for r in json.loads(capsys.readouterr().out)] == expected["movie_id"].tolist()
    assert main(["recommend", str(run_dir), *made_up, "-k", "4"]) == 0
    table = capsys.readouterr().out
    assert f"for a user who liked {title}, id {movie_id}; likes Drama; dislikes horror" in " ".join(table.split())
    assert all(str(m) in table for m in expected["movie_id"])
    assert main(["search", str(run_dir), "drama", "-k", "3", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert frame["movie_id"].tolist() == run.search(["drama"], k=3)["movie_id"].tolist()
    assert main(["search", str(run_dir), "Drama", "-k", "3"]) == 0
    assert "search: drama" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("family", "args", "message"),
    [
        ("siamese", ["recommend", "{run}", "--user", "{user}", "--liked", "{title}"], "error: --user and a made-up user"),
        ("siamese", ["recommend", "{run}"], "error: give --user ID, or a made-up user with --liked TITLE"),
        ("siamese", ["recommend", "{run}", "--likes-genre", "Horor"], "error: unknown genre 'Horor'; did you mean Horror?"),
        ("siamese", ["recommend", "{run}", "--liked", "No Such Movie (1900)"], "error: no movie titled"),
        ("mf", ["recommend", "{run}", "--liked", "{title}"], "error: model=mf scores only users seen in training"),
        ("siamese", ["search", "{run}", "qqqzzz"], "error: 'qqqzzz' is not a descriptor"),
        ("mf", ["search", "{run}", "drama"], "error: model=mf has no descriptor encoder"),
        ("siamese", ["search", "{run}", "drama", "-k", "0"], "error: k must be a positive integer"),
    ],
)
def test_cli_bad_made_up_user_or_search_is_one_line_and_exit_code_2(
    trained: Trained, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, family: str,
    args: list[str], message: str,
) -> None:  # fmt: skip
    monkeypatch.delenv("RECARENA_DEBUG", raising=False)
    run_dir = trained(family)[0]
    corpus = load_run(run_dir).corpus
    values = {"run": run_dir, "user": corpus.user_ids[0], "title": corpus.display_titles().iloc[0]}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**values) for a in args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1 and not captured.out
