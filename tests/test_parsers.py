"""Parsers of every MovieLens layout, on tiny files written by tests/data_factories.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recarena.data import movielens as ml
from recarena.data.side_info import visible_tags
from recarena.errors import DataError
from tests.data_factories import append_lines, make_items, make_ratings, make_users, n_lines, write_release


def _check_against_truth(corpus, n_users=5, n_items=6, *, half_stars=False, stride=1, ml100k_style=False):
    """The corpus holds exactly what the factory wrote: counts, id maps, ratings in file order, items."""
    truth = make_ratings(n_users, n_items, half_stars=half_stars, item_stride=stride)
    items = make_items(n_items, ml100k_style=ml100k_style, item_stride=stride)
    assert (corpus.n_users, corpus.n_items, corpus.n_ratings) == (n_users, n_items, len(truth))
    np.testing.assert_array_equal(corpus.user_ids, np.arange(1, n_users + 1))
    np.testing.assert_array_equal(corpus.item_ids, items["movie_id"].to_numpy())
    np.testing.assert_array_equal(corpus.user_ids[corpus.users], truth["user_id"])
    np.testing.assert_array_equal(corpus.item_ids[corpus.items], truth["movie_id"])
    np.testing.assert_array_equal(corpus.ratings, truth["rating"].to_numpy(np.float32))
    np.testing.assert_array_equal(corpus.timestamps, truth["timestamp"])
    assert corpus.users.dtype == np.int32 and corpus.ratings.dtype == np.float32
    assert corpus.item_table["title"].tolist() == items["title"].tolist()
    assert corpus.item_table["year"].tolist() == items["year"].tolist()
    assert corpus.item_table["genres"].tolist() == items["genres"].tolist()
    # Multi-hot genres agree with the |-joined strings.
    for row, genres in zip(corpus.genres, items["genres"], strict=True):
        expected = set(genres.split("|")) - {"(no genres listed)"}
        assert {g for g, flag in zip(corpus.genre_names, row, strict=True) if flag} == expected
    assert corpus.n_dropped == 0 and corpus.n_duplicates == 0


def test_ml100k_grouplens_layout(tmp_path: Path) -> None:
    corpus = ml.parse_ml100k(write_release(tmp_path, "ml-100k"))
    _check_against_truth(corpus, ml100k_style=True)
    assert corpus.extra["layout"] == "grouplens"
    assert corpus.item_table.loc[1, "title"] == "Movie 2 (V)" and corpus.item_table.loc[1, "year"] == 1982
    assert "unknown" in corpus.genre_names and "Misérables 4, Les" in corpus.item_table["title"].tolist()
    pd.testing.assert_frame_equal(corpus.user_table, make_users(5).astype({"age": "int32"}), check_dtype=False)


def test_ml100k_recbole_layout_gives_the_same_corpus(tmp_path: Path) -> None:
    official = ml.parse_ml100k(write_release(tmp_path, "ml-100k"))
    recbole = ml.parse_ml100k(write_release(tmp_path, "ml-100k-recbole"))
    _check_against_truth(recbole, ml100k_style=True)
    assert recbole.extra["layout"] == "recbole"
    for attr in ("users", "items", "ratings", "timestamps", "user_ids", "genres"):
        np.testing.assert_array_equal(getattr(official, attr), getattr(recbole, attr), err_msg=attr)
    assert official.genre_names == recbole.genre_names
    pd.testing.assert_frame_equal(official.item_table, recbole.item_table)
    pd.testing.assert_frame_equal(official.user_table, recbole.user_table)


def test_recbole_duplicate_titles_keep_distinct_ids(tmp_path: Path) -> None:
    root = write_release(tmp_path, "ml-100k-recbole")
    text = (root / "ml-100k.item").read_text().replace("Movie 5\t", "Movie 6\t")
    (root / "ml-100k.item").write_text(text)
    corpus = ml.parse_ml100k(root)
    assert corpus.n_items == 6 and (corpus.item_table["title"] == "Movie 6").sum() == 2


def test_ml1m_layout(tmp_path: Path) -> None:
    corpus = ml.parse_ml1m(write_release(tmp_path, "ml-1m"))
    _check_against_truth(corpus)
    assert corpus.user_table.columns.tolist() == ["user_id", "gender", "age", "occupation", "zip_code"]


def test_csv_release_with_tags_and_genome(tmp_path: Path) -> None:
    root = write_release(tmp_path, "csv", item_stride=10)
    corpus = ml.parse_csv_release(root, "ml-latest-small")
    _check_against_truth(corpus, half_stars=True, stride=10)
    tags = corpus.tags  # one row per application, with who and when (a split keeps the ones in its past)
    assert tags.columns.tolist() == ["item", "user_id", "tag", "timestamp"] and len(tags) == 3 + corpus.n_items
    assert tags[tags["item"] == 0].sort_values("timestamp")[["user_id", "timestamp"]].values.tolist() == [
        [1, 1000], [2, 1001], [1, 1002], [3, 1003]]  # fmt: skip
    counts = visible_tags(corpus, None)
    first = counts[counts["item"] == 0].set_index("tag")["count"].to_dict()
    assert first == {"funny": 2, "dark, comedy": 1, "classic": 1}  # lower-cased, stripped, counted
    assert counts["item"].dtype == np.int32 and set(counts["tag"]) == {"funny", "dark, comedy", "classic"}
    genome = corpus.genome
    assert (genome.groupby("item").size() == ml.GENOME_TOP_K).all()
    scores = pd.read_csv(root / "genome-scores.csv")
    best = scores[scores["movieId"] == 11].nlargest(ml.GENOME_TOP_K, "relevance")
    got = genome[genome["item"] == 1]
    assert sorted(got["tag"]) == sorted(f"genome tag {t}" for t in best["tagId"])
    assert (np.diff(got["relevance"].to_numpy()) <= 0).all()  # most relevant first


def test_csv_release_without_optional_files(tmp_path: Path) -> None:
    corpus = ml.parse_csv_release(write_release(tmp_path, "csv", with_tags=False, with_genome=False))
    assert corpus.tags is None and corpus.genome is None and corpus.n_ratings == 18


def test_split_title_edge_cases() -> None:
    raw = pd.Series(["Toy Story (1995)", "Babylon 5", "X (1995) (V)", "1984 (1956)", " Y (2001) ", "Z (2006–2007)"])
    title, year = ml.split_title(raw)
    assert title.tolist() == ["Toy Story", "Babylon 5", "X (V)", "1984", "Y", "Z (2006–2007)"]
    assert year.tolist() == [1995, pd.NA, 1995, 1956, 2001, pd.NA]


def test_missing_fields_are_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_release(tmp_path, "csv")
    append_lines(root / "ratings.csv", "1,2,,880000001", ",3,4.0,880000002", "2,999,4.0,880000003")
    corpus = ml.parse_csv_release(root)
    assert corpus.n_dropped == 3 and corpus.n_ratings == 18  # incl. the rating of an unknown movie
    assert "dropped 3 of 21" in caplog.text


def test_duplicates_keep_the_latest(tmp_path: Path) -> None:
    root = write_release(tmp_path, "csv")
    truth = make_ratings(half_stars=True)
    u, m = truth.loc[0, ["user_id", "movie_id"]]
    append_lines(root / "ratings.csv", f"{u},{m},0.5,999999999", f"{u},{m},5.0,1")
    corpus = ml.parse_csv_release(root)
    assert corpus.n_duplicates == 2 and corpus.n_ratings == 18
    row = np.flatnonzero((corpus.user_ids[corpus.users] == u) & (corpus.item_ids[corpus.items] == m))
    assert corpus.ratings[row].tolist() == [0.5] and corpus.timestamps[row].tolist() == [999999999]


@pytest.mark.parametrize(
    ("layout", "file", "line"),
    [("csv", "ratings.csv", "1,2,7.0,5"), ("ml-100k", "u.data", "1\t2\t6\t5"), ("ml-1m", "ratings.dat", "1::2::0::5")],
)
def test_out_of_scale_rating_names_file_and_line(tmp_path: Path, layout: str, file: str, line: str) -> None:
    root = write_release(tmp_path, layout)
    append_lines(root / file, line)
    with pytest.raises(DataError, match=rf"{file}, line {n_lines(root / file)}: rating .* outside"):
        ml.parse_ml100k(root) if layout == "ml-100k" else ml.parse_ml1m(root) if layout == "ml-1m" else ml.parse_csv_release(root)


@pytest.mark.parametrize(
    ("layout", "file", "bad", "message"),
    [
        ("csv", "ratings.csv", "1,2,3.0,4,5", "expected 4 fields, found 5"),
        ("csv", "ratings.csv", "1,2", "expected 4 fields, found 2"),
        ("csv", "ratings.csv", "1,abc,3.0,4", "column 'movieId' holds 'abc'"),
        ("csv", "movies.csv", "x7,Foo (1999),Drama", "column 'movieId' holds 'x7'"),
        ("ml-100k", "u.data", "1\t2\t3", "expected 4 fields, found 3"),
        ("ml-100k", "u.data", "1.5\t2\t3\t4", "column 'user_id' holds '1.5', not an integer"),
        ("ml-1m", "ratings.dat", "1::2::3::4::5", "expected 4 fields, found 5"),
        ("ml-100k-recbole", "ml-100k.inter", "1\tz\t3\t4", "column 'item_id:token' holds 'z'"),
    ],
)
def test_corrupted_line_names_file_and_line(tmp_path: Path, layout: str, file: str, bad: str, message: str) -> None:
    root = write_release(tmp_path, layout)
    good_lines = n_lines(root / file)
    last_good = (root / file).read_text(encoding="latin-1").splitlines()[-1]
    append_lines(root / file, bad, last_good, encoding="latin-1")  # the bad line is not the last one
    parse = {"csv": ml.parse_csv_release, "ml-1m": ml.parse_ml1m}.get(layout, ml.parse_ml100k)
    with pytest.raises(DataError, match=rf"{file}, line {good_lines + 1}: {message}"):
        parse(root)


def test_empty_ratings_file(tmp_path: Path) -> None:
    root = write_release(tmp_path, "csv")
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match="holds no ratings"):
        ml.parse_csv_release(root)


def test_missing_layout_file_is_named(tmp_path: Path) -> None:
    root = write_release(tmp_path, "ml-1m")
    (root / "users.dat").unlink()
    with pytest.raises(DataError, match=r"users\.dat: file not found"):
        ml.parse_ml1m(root)
    with pytest.raises(DataError, match="neither u.data"):
        ml.parse_ml100k(tmp_path)


# ---------------------------------------------------------------------------------------------- custom
def test_custom_with_items_and_column_options(tmp_path: Path) -> None:
    cols = {"userId": "uid", "movieId": "iid", "rating": "stars", "timestamp": "when", "title": "name", "genres": "kinds"}
    root = write_release(tmp_path, "custom", columns=cols, sep=";")
    text = (root / "items.csv").read_text().replace("|", "/")
    (root / "items.csv").write_text(text)
    corpus = ml.parse_custom(
        root / "ratings.csv", items_path=root / "items.csv", sep=";", user_col="uid", item_col="iid",
        rating_col="stars", timestamp_col="when", title_col="name", genres_col="kinds", genres_sep="/",
    )  # fmt: skip
    _check_against_truth(corpus, half_stars=True)


def test_custom_without_items_or_timestamps(tmp_path: Path) -> None:
    root = write_release(tmp_path, "custom")
    corpus = ml.parse_custom(root / "ratings.csv", timestamp_col=None)
    truth = make_ratings(half_stars=True)
    assert corpus.item_table["title"].tolist() == [str(i) for i in corpus.item_ids]
    assert corpus.item_table["year"].isna().all() and corpus.genres.shape == (6, 0)
    np.testing.assert_array_equal(corpus.timestamps, np.arange(len(truth)))  # file order is time order
    assert corpus.extra["file_order_time"] is True


def test_custom_date_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,1,4,2020-01-01 00:00:10\n1,2,3,2020-01-02\n")
    corpus = ml.parse_custom(path)
    assert corpus.timestamps.tolist() == [1577836810, 1577923200]


def test_custom_errors_name_file_column_and_option(tmp_path: Path) -> None:
    root = write_release(tmp_path, "custom")
    with pytest.raises(DataError, match=r"nope\.csv: ratings file not found; set data\.path="):
        ml.parse_custom(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"ratings\.csv: no column 'uid' .*set data\.user_col="):
        ml.parse_custom(root / "ratings.csv", user_col="uid")
    with pytest.raises(DataError, match=r"no column 'time' .*set data\.timestamp_col="):
        ml.parse_custom(root / "ratings.csv", timestamp_col="time")
    with pytest.raises(DataError, match=r"items\.csv: no column 'kind' .*set data\.genres_col="):
        ml.parse_custom(root / "ratings.csv", items_path=root / "items.csv", genres_col="kind")
    with pytest.raises(DataError, match=r"gone\.csv: items file not found; fix data\.items_path"):
        ml.parse_custom(root / "ratings.csv", items_path=root / "gone.csv")
    append_lines(root / "ratings.csv", "1,1,9.0,5")
    with pytest.raises(DataError, match=rf"ratings\.csv, line {n_lines(root / 'ratings.csv')}: rating 9"):
        ml.parse_custom(root / "ratings.csv")


def test_a_header_only_file_says_it_has_no_rows_and_another_separator_is_suggested(tmp_path: Path) -> None:
    from recarena.data.movielens import parse_custom
    from recarena.errors import DataError

    empty = tmp_path / "empty.csv"
    empty.write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"empty.csv: holds no ratings \(no rows after its header"):
        parse_custom(empty)
    for sep, shown in ((";", "';'"), ("\t", "'\\\\t'")):
        other = tmp_path / "other.csv"
        other.write_text(sep.join(["userId", "movieId", "rating", "timestamp"]) + "\n" + sep.join(["1", "2", "4", "100"]) + "\n")
        with pytest.raises(DataError, match=rf"other.csv: no column 'userId' .*separated by {shown}: set data.sep={shown}"):
            parse_custom(other)
