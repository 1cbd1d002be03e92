"""Descriptors and triplet mining (recarena.data.triplets / mining): the overlap and co-like rules, checked against
brute force on hand-made and random catalogues; the anchor split; no validation or test rating read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recarena.data import mining
from recarena.data.corpus import Corpus, RatingScale
from recarena.data.triplets import MiningOptions, item_descriptors, liked_by, mine_triplets, split_by_items
from recarena.errors import ConfigError
from tests.data_factories import tag_applications

CATALOGUE = [  # item -> descriptors
    {"drama", "1990s", "war"},  # 0: shares 3 with 1, 2 with 2
    {"drama", "1990s", "war", "history"},  # 1
    {"drama", "1990s"},  # 2
    {"comedy", "2000s"},  # 3
    {"comedy", "2000s", "romance"},  # 4
    {"horror", "1980s"},  # 5
    {"horror", "1980s", "gore"},  # 6
    {"animation", "2010s"},  # 7: shares nothing
]


def multi_hot(sets: list[set[str]]) -> sp.csr_matrix:
    vocabulary = sorted(set().union(*sets))
    rows = [i for i, s in enumerate(sets) for _ in s]
    cols = [vocabulary.index(d) for s in sets for d in sorted(s)]
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(sets), len(vocabulary)))


def check_rules(x: sp.csr_matrix, liked: sp.csr_matrix, triplets: np.ndarray, content: int, ratings: int,
                negatives: str) -> None:
    """Every triplet obeys the module's rules, against dense brute-force overlaps and co-likes."""
    overlap, co = (x @ x.T).toarray(), (liked @ liked.T).toarray()
    n = x.shape[0]
    for a, p, q in triplets:
        others = np.delete(np.arange(n), a)
        assert p != a and q != a and q != p
        by_content = content and overlap[a, p] >= 1 and overlap[a, p] >= np.sort(overlap[a, others])[-content]
        by_co = ratings and co[a, p] >= 1 and co[a, p] >= np.sort(co[a, others])[-ratings]
        assert by_content or by_co, (a, p)
        if by_content and overlap[a, q] < overlap[a, p]:  # a content triplet
            below = others[overlap[a, others] < overlap[a, p]]
            pick = min if negatives == "easiest" else max
            if pick(overlap[a, below]) == overlap[a, q]:
                continue
        assert by_co and co[a, q] < co[a, p], (a, p, q)  # else a ratings triplet
        if negatives == "easiest":
            assert overlap[a, q] == overlap[a, others].min()
        else:
            near = others[(overlap[a, others] < overlap[a, p]) & (co[a, others] < co[a, p])]
            assert overlap[a, q] == (overlap[a, near].max() if len(near) else overlap[a, others].min())


@pytest.mark.parametrize("negatives", ["easiest", "near_miss"])
def test_content_triplets_on_a_hand_made_catalogue(negatives: str) -> None:
    x = multi_hot(CATALOGUE)
    none_liked = sp.csr_matrix((len(CATALOGUE), 1), dtype=np.float32)
    triplets = mine_triplets(x, none_liked, content=1, ratings=0, negatives=negatives, seed=3)
    check_rules(x, none_liked, triplets, 1, 0, negatives)
    by_anchor = {int(a): (int(p), int(q)) for a, p, q in triplets}
    assert set(by_anchor) == set(range(7))  # item 7 shares no descriptor: it has no content positive
    assert by_anchor[0][0] == 1 and by_anchor[2][0] in (0, 1) and by_anchor[5][0] == 6
    if negatives == "easiest":
        assert by_anchor[0][1] in (3, 4, 5, 6, 7)  # shares nothing with item 0
    else:
        assert by_anchor[0][1] == 2  # 2 shared descriptors: the most still below the positive's 3


def test_ratings_triplets_take_the_most_co_liked() -> None:
    x = multi_hot(CATALOGUE)
    # users x items likes: item 3 is liked with item 0 by three users, item 2 by one.
    likes = np.zeros((5, len(CATALOGUE)), np.float32)
    likes[[0, 1, 2], 0] = likes[[0, 1, 2], 3] = likes[3, [0, 2]] = likes[4, [5, 7]] = 1
    liked = sp.csr_matrix(likes.T)  # items x users
    for negatives in ("easiest", "near_miss"):
        triplets = mine_triplets(x, liked, content=0, ratings=1, negatives=negatives, seed=0)
        check_rules(x, liked, triplets, 0, 1, negatives)
        assert {(a, p) for a, p, _ in triplets} >= {(0, 3), (3, 0), (5, 7), (7, 5)}
        assert 1 not in triplets[:, 0] and 4 not in triplets[:, 0]  # never co-liked with anything
    both = mine_triplets(x, liked, content=1, ratings=1, negatives="easiest", seed=0)
    assert {(a, p) for a, p, _ in both} >= {(0, 1), (0, 3)}  # the union of both sources


@pytest.mark.parametrize("negatives", ["easiest", "near_miss"])
def test_random_catalogues_against_brute_force(monkeypatch: pytest.MonkeyPatch, negatives: str) -> None:
    """Several positives per anchor, common and rare descriptors, and chunks smaller than the catalogue."""
    rng = np.random.default_rng(0)
    for trial in range(6):
        n, v = int(rng.integers(10, 90)), int(rng.integers(4, 30))
        x = sp.csr_matrix((rng.random((n, v)) < rng.random(v) * 0.6).astype(np.float32))
        liked = sp.csr_matrix((rng.random((n, 40)) < 0.15).astype(np.float32))
        monkeypatch.setattr("recarena.data.triplets.CHUNK_CELLS", 500 if trial % 2 else 1 << 20)
        triplets = mine_triplets(x, liked, content=2, ratings=3, negatives=negatives, seed=trial)
        check_rules(x, liked, triplets, 2, 3, negatives)
        assert len(triplets) == len(np.unique(triplets, axis=0))


def test_nearly_taken_pools_are_drawn_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no rejection rounds every pool draw goes through the exact listing: same rules."""
    monkeypatch.setattr(mining.Chunk, "REJECTION_ROUNDS", 0)
    rng = np.random.default_rng(5)
    x = sp.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float32))
    liked = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    check_rules(x, liked, mine_triplets(x, liked, 2, 2, "easiest", seed=1), 2, 2, "easiest")


def test_ties_are_broken_at_random_not_by_catalogue_order() -> None:
    x = multi_hot([{"drama", "1990s"}] * 12)  # every item ties with every other
    triplets = mine_triplets(x, sp.csr_matrix((12, 1), dtype=np.float32), 1, 0, "easiest", seed=0)
    assert len(triplets) == 0  # nothing overlaps less than the positive: no negative, no triplet
    x = multi_hot([{"drama", "1990s"}] * 12 + [{"western"}])
    positives = mine_triplets(x, sp.csr_matrix((13, 1), dtype=np.float32), 1, 0, "easiest", seed=0)[:, 1]
    assert len(set(positives.tolist())) > 3


def test_held_out_anchors_and_positives_appear_nowhere_in_training() -> None:
    """Co-liked positives are symmetric: with anchors alone held out, a held-out pair (a, p) came back reversed in
    training. Here every held-out anchor and positive is absent from every training triplet, in every role."""
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((60, 10)) < 0.3).astype(np.float32))
    liked = sp.csr_matrix((rng.random((60, 40)) < 0.3).astype(np.float32))
    triplets = mine_triplets(x, liked, 1, 8, "near_miss", seed=2)
    train, heldout = split_by_items(triplets, 0.2, seed=0)
    assert len(heldout) > 0 and len(train) > 0
    unseen = set(heldout[:, 0]) | set(heldout[:, 1])
    assert not unseen & set(train.ravel().tolist())
    pairs = {tuple(p) for p in train[:, :2].tolist()}
    assert not {(p, a) for a, p in heldout[:, :2].tolist()} & pairs  # none reversed in training
    # The held-out items are a fifth of the anchors: 12 of 60; the held-out triplets are all of theirs among them.
    held = np.unique(np.concatenate([heldout[:, 0], heldout[:, 1]]))
    assert len(held) <= 12
    both = np.isin(triplets[:, 0], held) & np.isin(triplets[:, 1], held)
    assert len(heldout) == both.sum()
    assert len(split_by_items(triplets, 0.0, seed=0)[1]) == 0
    assert len(split_by_items(triplets, 0.0, seed=0)[0]) == len(triplets)


def small_corpus() -> Corpus:
    items = pd.DataFrame({"movie_id": [10, 11, 12], "title": ["A", "B", "C"],
                          "year": pd.array([1995, 2003, None], dtype="Int64"),
                          "genres": ["Drama|War", "Comedy", "unknown"]})  # fmt: skip
    genome = pd.DataFrame({"item": [0, 0, 0, 1], "tag": ["war", "tense", "dull", "funny"],
                           "relevance": np.array([0.9, 0.8, 0.1, 0.7], np.float32)})  # fmt: skip
    tags = tag_applications([1, 1, 2], ["funny", "silly", "odd"], [5, 1, 2])
    return Corpus(
        name="toy", users=np.array([0, 0, 1, 1], np.int32), items=np.array([0, 1, 1, 2], np.int32),
        ratings=np.array([5, 3, 4, 1], np.float32), timestamps=np.arange(4, dtype=np.int64),
        user_ids=np.array([1, 2]), item_table=items, genre_names=["Comedy", "Drama", "War", "unknown"],
        genres=np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], np.uint8), scale=RatingScale(1, 5, 1),
        tags=tags, genome=genome,
    )  # fmt: skip


def test_descriptors_of_a_small_corpus() -> None:
    x, vocabulary = item_descriptors(small_corpus(), genome_k=2, tags_k=1)
    described = [{vocabulary[c] for c in x[i].indices} for i in range(3)]
    assert described[0] == {"drama", "war", "1990s", "tense"}  # genre and genome "war" are one descriptor
    assert described[1] == {"comedy", "2000s", "funny"}  # the most applied tag only
    assert described[2] == {"odd"}  # no year, and the "unknown" genre is no descriptor
    assert set(x.data) == {1.0}


def test_likes_use_the_given_rows_threshold_and_cap() -> None:
    corpus = small_corpus()
    liked = liked_by(corpus, np.arange(4), threshold=4.0, user_cap=5).toarray()
    assert liked.sum() == 2 and liked[0, 0] == 1 and liked[1, 1] == 1  # the 5 of user 0 and the 4 of user 1
    latest = liked_by(corpus, np.arange(4), threshold=None, user_cap=1).toarray()
    assert latest[1, 0] == 1 and latest[2, 1] == 1 and latest.sum() == 2  # each user's latest rating only


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="encoding='tfidf' is unknown; use one of multi_hot, text"):
        MiningOptions.from_config({"encoding": "tfidf"})
    with pytest.raises(ConfigError, match="model.negatives"):
        MiningOptions.from_config({"negatives": "hardest"})
    assert MiningOptions.from_config({"positives": "content", "other_key": 1}).positives == "content"


def test_features_never_read_validation_or_test_ratings(make_cfg) -> None:
    """Rewriting every validation and test rating changes neither triplets nor user profiles; rewriting training
    ratings does (so the check can fail)."""
    from recarena.build import build_datamodule, build_model
    from recarena.data.triplets import TripletData

    cfg = make_cfg("model=siamese")
    dm = build_datamodule(cfg, "triplets", 3.0)
    dm.setup("fit")
    model = build_model(cfg, dm)
    rows = np.concatenate([dm.split.train, dm.split.known])

    def features() -> tuple[np.ndarray, ...]:
        data = TripletData(dm)  # prepared again from the (rewritten) ratings
        return data.train, data.heldout, *(t.numpy() for t in model.user_profiles(dm.corpus, rows))

    before = features()
    held = np.concatenate([dm.split.val, dm.split.test])
    dm.corpus.ratings[held] = 6.0 - dm.corpus.ratings[held]
    dm.corpus.items[held] = (dm.corpus.items[held] + 1) % dm.corpus.n_items
    assert all(np.array_equal(b, a) for b, a in zip(before, features(), strict=True))
    dm.corpus.ratings[dm.split.train] = 6.0 - dm.corpus.ratings[dm.split.train]
    assert not all(np.array_equal(b, a) for b, a in zip(before, features(), strict=True))


def test_semi_hard_is_the_old_name_of_near_miss(caplog: pytest.LogCaptureFixture) -> None:
    from recarena.data.triplets import MiningOptions

    with caplog.at_level("WARNING"):
        opts = MiningOptions.from_config({"negatives": "semi_hard"})
    assert opts.negatives == "near_miss" and "use model.negatives=near_miss" in caplog.text
