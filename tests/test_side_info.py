"""No future in item side information: tag applications a split has not reached are not counted, and the tag
genome (computed from all ratings) is refused under a time split unless explicitly allowed and marked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recarena.data.corpus import Corpus, RatingScale
from recarena.data.features import item_features
from recarena.data.side_info import check_genome, uses_future_item_features, visible_tags
from recarena.data.splits import make_split
from recarena.data.triplets import item_descriptors
from recarena.errors import ConfigError
from recarena.report import _row

# 4 users x 5 items; every user rates items 0..4 at times 10u + i (user 0 at 0..4, user 3 at 30..34).
USERS, ITEMS = np.repeat(np.arange(4), 5), np.tile(np.arange(5), 4)
TIMES = (10 * USERS + ITEMS).astype(np.int64)


def corpus_with(tags: list[tuple[int, int, str, int]], genome: bool = False) -> Corpus:
    """Tag applications as (item, user_id, tag, timestamp); MovieLens user ids are 1 + the index."""
    frame = pd.DataFrame(tags, columns=["item", "user_id", "tag", "timestamp"]).astype({"item": "int32"})
    items = pd.DataFrame({"movie_id": np.arange(5) + 1, "title": "m", "year": pd.array([2000] * 5, dtype="Int64"),
                          "genres": "Drama"})  # fmt: skip
    genome_frame = pd.DataFrame({"item": [0], "tag": ["dark"], "relevance": np.float32([0.9])}) if genome else None
    return Corpus(name="toy", users=USERS.astype(np.int32), items=ITEMS.astype(np.int32),
                  ratings=np.full(20, 4.0, np.float32), timestamps=TIMES, user_ids=np.arange(4, dtype=np.int64) + 1,
                  item_table=items, genre_names=["Drama"], genres=np.ones((5, 1), np.uint8),
                  scale=RatingScale(0.5, 5.0, 0.5), tags=frame, genome=genome_frame)  # fmt: skip


def counts(corpus: Corpus, split) -> dict[tuple[int, str], int]:
    frame = visible_tags(corpus, split)
    return {(int(r.item), r.tag): int(r.count) for r in frame.itertuples()}


def test_time_cutoff_drops_applications_from_the_first_held_out_time_on() -> None:
    early = [(0, 1, "cult", 5), (1, 9, "cult", 6)]  # user id 9 has no rating: counted while in the past
    late = (4, 4, "twist", 33)  # applied to a held-out item after the cutoff
    base, with_late = corpus_with(early), corpus_with([*early, late])
    split = make_split(base, {"name": "time_cutoff", "val_fraction": 0.2, "test_fraction": 0.2}, 0)
    held_from = TIMES[np.concatenate([split.val, split.test])].min()
    assert late[3] >= held_from > max(t for *_, t in early)
    assert counts(with_late, split) == counts(base, split) == {(0, "cult"): 1, (1, "cult"): 1}
    assert counts(with_late, None)[(4, "twist")] == 1  # without a split (no held-out ratings) it counts
    # The model's inputs are unchanged by the late application: the two-tower's item features, the descriptors.
    np.testing.assert_array_equal(item_features(with_late, ["tags"], 4, split), item_features(base, ["tags"], 4, split))
    (x_late, v_late), (x_base, v_base) = (item_descriptors(c, 0, 5, split) for c in (with_late, base))
    assert v_late == v_base and (x_late != x_base).nnz == 0


def test_per_user_splits_drop_each_user_s_applications_from_their_first_held_out_rating_on() -> None:
    tags = [(0, 1, "a", 2), (4, 1, "a", 4), (3, 2, "b", 12), (4, 2, "b", 13), (2, 9, "c", 99)]
    corpus = corpus_with(tags)
    split = make_split(corpus, {"name": "leave_one_out", "min_user_ratings": 3}, 0)
    first_held = {u + 1: TIMES[np.concatenate([split.val, split.test])][USERS[np.concatenate(
        [split.val, split.test])] == u].min() for u in range(4)}  # fmt: skip
    assert first_held[1] == 3 and first_held[2] == 13  # leave_one_out holds out each user's last two
    # User 1's tag at 4 and user 2's at 13 are at or after their held-out times; user 9 rated nothing.
    assert counts(corpus, split) == {(0, "a"): 1, (3, "b"): 1, (2, "c"): 1}


def test_the_genome_is_refused_under_a_time_split_unless_allowed_and_then_marked() -> None:
    corpus = corpus_with([], genome=True)
    temporal = make_split(corpus, {"name": "temporal", "val_fraction": 0.2, "test_fraction": 0.2,
                                   "min_user_ratings": 3}, 0)  # fmt: skip
    with pytest.raises(ConfigError, match=r"model.genome_k=5 .*split=temporal.*model.genome_k=0.*allow_future"):
        check_genome(corpus, temporal, genome_k=5, allowed=False)
    check_genome(corpus, temporal, genome_k=0, allowed=False)  # not read: fine
    check_genome(corpus, temporal, genome_k=5, allowed=True)
    assert uses_future_item_features(corpus, temporal, 5) and not uses_future_item_features(corpus, temporal, 0)
    shuffled = make_split(corpus, {"name": "random", "val_fraction": 0.2, "test_fraction": 0.2, "per_user": False}, 0)
    check_genome(corpus, shuffled, genome_k=5, allowed=False)  # no time order to leak
    marked = _row(__import__("pathlib").Path("run/metrics.json"), {"model": "siamese", "future_item_features": True})
    assert marked["model"] == "siamese (future item features)"
