"""The synthetic generator: MovieLens-shaped, exact sizes, no duplicate pairs, cached, read by the CSV parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recarena import paths
from recarena.data import sources, synthetic
from recarena.data.synthetic import GENRES, generate_synthetic

CONF = paths.CONF_DIR / "data" / "synthetic.yaml"


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "medium", 2000, 1000, 60_000, True, 0)


def test_files_sizes_and_uniqueness(medium: Path) -> None:
    ratings = pd.read_csv(medium / "ratings.csv")
    assert ratings.columns.tolist() == ["userId", "movieId", "rating", "timestamp"]
    assert len(ratings) == 60_000 and not ratings.duplicated(["userId", "movieId"]).any()
    assert ratings["userId"].nunique() == 2000 and ratings["movieId"].nunique() == 1000  # everyone rated
    assert set(ratings["rating"]) <= set(np.arange(1, 11) / 2) and 3.3 < ratings["rating"].mean() < 3.7
    assert 0.8 < ratings["rating"].std() < 1.2
    # Timestamps increase per user, in file order, over a few years.
    assert (ratings.groupby("userId")["timestamp"].diff().dropna() >= 0).all()
    span_years = (ratings["timestamp"].max() - ratings["timestamp"].min()) / (365 * 86400)
    assert 3 < span_years <= 5


def test_power_law_activity_and_popularity(medium: Path) -> None:
    ratings = pd.read_csv(medium / "ratings.csv")
    for col, n in (("movieId", 1000), ("userId", 2000)):
        counts = np.sort(ratings[col].value_counts().to_numpy())[::-1]
        top_tenth = counts[: n // 10].sum() / counts.sum()
        assert top_tenth > 0.25, col  # uniform would be 0.10
        assert counts[0] > 10 * np.median(counts), col


def test_movies_and_tags(medium: Path) -> None:
    movies = pd.read_csv(medium / "movies.csv")
    assert movies["movieId"].tolist() == list(range(1, 1001))
    assert movies["title"].str.fullmatch(r"Synthetic Movie \d+ \(\d{4}\)").all()
    assert movies.loc[16, "title"].startswith("Synthetic Movie 17 (")
    genres = movies["genres"].str.split("|")
    assert genres.map(len).between(1, 3).all() and set(genres.explode()) <= set(GENRES)
    tags = pd.read_csv(medium / "tags.csv")
    assert tags.columns.tolist() == ["userId", "movieId", "tag", "timestamp"] and len(tags) == 2000


def test_deterministic_under_the_seed(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", 50, 40, 600, False, seed=3)
    b = generate_synthetic(tmp_path / "b", 50, 40, 600, False, seed=3)
    c = generate_synthetic(tmp_path / "c", 50, 40, 600, False, seed=4)
    assert (a / "ratings.csv").read_bytes() == (b / "ratings.csv").read_bytes()
    assert (a / "ratings.csv").read_bytes() != (c / "ratings.csv").read_bytes()
    assert not (a / "tags.csv").exists()


@pytest.mark.parametrize(("n_users", "n_items", "n_ratings"), [(10, 10, 5), (5, 4, 20), (3, 100, 290), (30, 2, 45)])
def test_edge_sizes(tmp_path: Path, n_users: int, n_items: int, n_ratings: int) -> None:
    out = generate_synthetic(tmp_path / "e", n_users, n_items, n_ratings, True, 0)
    ratings = pd.read_csv(out / "ratings.csv")
    assert len(ratings) == n_ratings and not ratings.duplicated(["userId", "movieId"]).any()
    if n_ratings >= max(n_users, n_items):
        assert ratings["userId"].nunique() == n_users and ratings["movieId"].nunique() == n_items


def test_invalid_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_ratings <= n_users"):
        generate_synthetic(tmp_path / "x", 2, 2, 5, False, 0)


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_movies", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "out", 20, 10, 100, False, 0)
    assert list(tmp_path.iterdir()) == []


def test_load_corpus_generates_once_and_parses(tmp_path: Path, monkeypatch) -> None:
    cfg = OmegaConf.merge(
        OmegaConf.load(CONF),
        {"cache_dir": str(tmp_path), "n_users": 120, "n_items": 80, "n_ratings": 4000, "generator_seed": 1},
    )
    corpus = sources.load_corpus(cfg)
    assert (corpus.name, corpus.n_users, corpus.n_items, corpus.n_ratings) == ("synthetic", 120, 80, 4000)
    assert corpus.scale.step == 0.5 and corpus.tags is not None and corpus.genres.sum(axis=1).min() >= 1
    assert corpus.item_table["year"].notna().all() and corpus.item_table.loc[0, "title"] == "Synthetic Movie 1"

    def boom(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(synthetic, "generate_synthetic", boom)
    again = sources.load_corpus(cfg)  # generated files and parsed corpus both cached
    np.testing.assert_array_equal(again.ratings, corpus.ratings)
    (tmp_path / "corpus").rename(tmp_path / "old-corpus")
    assert sources.load_corpus(cfg).n_ratings == 4000  # re-parsed from the cached files, not regenerated
    other = OmegaConf.merge(cfg, {"generator_seed": 2})
    monkeypatch.undo()
    assert not np.array_equal(sources.load_corpus(other).ratings, corpus.ratings)
