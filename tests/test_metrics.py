"""Ranking and rating metrics: a hand-computed example, exact tie order, torchmetrics cross-checks, chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import (
    RetrievalHitRate,
    RetrievalMRR,
    RetrievalNormalizedDCG,
    RetrievalPrecision,
    RetrievalRecall,
)

from recarena.data.heldout import EvalData
from recarena.evaluation.metrics import RankingMetrics, RatingMetrics, head_mask
from recarena.evaluation.ranking import NO_ITEM, dense_masks, matmul_into, seeded_tie_rank, topk_items

L3 = 1 / math.log2(3)  # discount of rank 2: 1/log2(2+1)
L4 = 1 / math.log2(4)  # discount of rank 3: 0.5

# ---------------------------------------------------------------------------------------------------------
# Hand-computed example: 5 users x 6 items, ks = [1, 3], threshold 4.0, head_share 0.8.
#
# Training popularity [10, 6, 2, 1, 1, 0] (total 20). Head: sorted by count, item 0 (10 before it: 0 < 16),
# item 1 (10 before it < 16), item 2 (16 before it: the head already holds 80% exactly) -> head {0, 1},
# long tail {2, 3, 4, 5}.
#
# user  excluded     held-out (item: rating)   relevant   scores                           top-3 (after excl)
#  0    {0}          2:5.0  4:3.0  5:4.0        {2, 5}     [.9, .1, .5, .8, .3, .2]         [3, 2, 4]  hits 0 1 0
#  1    {1, 3}       5:4.0  0:3.5               {5}        [.5, .9, .5, .9, .5, .7]         [5, 0, 2]  hits 1 0 0
#                                                          (0, 2, 4 tie at .5 -> by index)
#  2    {}           1:2.0                      {}         [0, 1, 0, 0, 0, 0]               skipped (no relevant)
#  3    {0, 1, 2, 3} 5:5.0                      {5}        [1, 1, 1, 1, .9, .1]             [4, 5, -]  hits 0 1 0
#  4    {}           5:4.5                      {5}        constant .25                     [0, 1, 2]  hits 0 0 0
#
# Ranked users: 0, 1, 3, 4 (4); skipped: user 2 (1).
# @1: only user 1 hits at rank 1 -> recall = ndcg = hit_rate = mrr = precision = 1/4 = 0.25.
# @3, per user (recall, precision, hit, mrr, ndcg):
#   u0: 1/2, 1/3, 1, 1/2, DCG = 1/log2(3), IDCG over min(3, 2) = 2 items = 1 + 1/log2(3)
#   u1: 1,   1/3, 1, 1,   1 (DCG = IDCG = 1)
#   u3: 1,   1/3, 1, 1/2, DCG = 1/log2(3), IDCG over min(3, 1) = 1 item = 1  (list has 2 items; still /3)
#   u4: 0,   0,   0, 0,   0
#   means: recall 2.5/4 = 0.625, precision 1/4, hit_rate 3/4, mrr 2/4, ndcg (L3/(1+L3) + 1 + L3) / 4.
# coverage@1: top-1 items {3, 5, 4, 0} -> 4/6 (skipped user 2 would have added item 1).
# coverage@3: {3, 2, 4, 5, 0, 1} -> 6/6.
# popularity@1: items 3, 5, 4, 0 -> (1 + 0 + 1 + 10) / 4 slots = 3.0.
# popularity@3: u0 1+2+1, u1 0+10+2, u3 1+0 (2 slots), u4 10+6+2 -> 35 / 11 slots.
# long_tail@1: 3, 5, 4 are tail, 0 is head -> 3/4.
# long_tail@3: u0 3, u1 2, u3 2, u4 1 (item 2) -> 8 / 11.
# ---------------------------------------------------------------------------------------------------------
POPULARITY = [10, 6, 2, 1, 1, 0]
EXCLUDE = [(0, 0), (1, 1), (1, 3), (3, 0), (3, 1), (3, 2), (3, 3)]
HELDOUT = [
    (0, 2, 5.0),
    (0, 4, 3.0),
    (0, 5, 4.0),
    (1, 5, 4.0),
    (1, 0, 3.5),
    (2, 1, 2.0),
    (3, 5, 5.0),
    (4, 5, 4.5),
]
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5, 0.8, 0.3, 0.2],
        [0.5, 0.9, 0.5, 0.9, 0.5, 0.7],
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0, 0.9, 0.1],
        [0.25] * 6,
    ]
)
EXPECTED = {
    "recall@1": 0.25,
    "ndcg@1": 0.25,
    "hit_rate@1": 0.25,
    "mrr@1": 0.25,
    "precision@1": 0.25,
    "recall@3": 0.625,
    "ndcg@3": (L3 / (1 + L3) + 1 + L3) / 4,
    "hit_rate@3": 0.75,
    "mrr@3": 0.5,
    "precision@3": 0.25,
    "coverage@1": 4 / 6,
    "coverage@3": 1.0,
    "popularity@1": 3.0,
    "popularity@3": 35 / 11,
    "long_tail@1": 0.75,
    "long_tail@3": 8 / 11,
    "users_ranked": 4,
    "users_skipped": 1,
}


def _hand_data() -> EvalData:
    ex = np.array(EXCLUDE)
    ho = np.array(HELDOUT)
    return EvalData(5, 6, ex[:, 0], ex[:, 1], ho[:, 0].astype(int), ho[:, 1].astype(int), ho[:, 2])


def _run(metric: RankingMetrics, data: EvalData, scores: torch.Tensor, chunk: int) -> dict[str, float]:
    for batch in data.batches(chunk):
        metric.update(scores[batch["users"]], batch)
    return {k: float(v) for k, v in metric.compute().items()}


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_hand_computed_example(chunk: int) -> None:
    metric = RankingMetrics([1, 3], 6, torch.tensor(POPULARITY), head_share=0.8, relevance_threshold=4.0)
    got = _run(metric, _hand_data(), SCORES, chunk)
    assert set(got) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_hand_computed_per_user() -> None:
    metric = RankingMetrics([1, 3], 6, POPULARITY, keep_per_user=True)
    _run(metric, _hand_data(), SCORES, chunk=2)
    pu = metric.per_user()
    assert pu["user"].tolist() == [0, 1, 3, 4]
    assert pu["n_relevant"].tolist() == [2, 1, 1, 1]
    assert pu["recall@3"].tolist() == pytest.approx([0.5, 1, 1, 0])
    assert pu["ndcg@3"].tolist() == pytest.approx([L3 / (1 + L3), 1, L3, 0])
    assert pu["mrr@3"].tolist() == pytest.approx([0.5, 1, 0.5, 0])
    assert pu["precision@3"].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    assert pu["popularity@3"].tolist() == pytest.approx([4 / 3, 12 / 3, 1 / 2, 18 / 3])
    assert pu["long_tail@3"].tolist() == pytest.approx([1, 2 / 3, 1, 1 / 3])
    # Means of the per-user values are the aggregate accuracy metrics.
    agg = metric.compute()
    for name in ("recall", "ndcg", "hit_rate", "mrr", "precision"):
        assert float(pu[f"{name}@3"].mean()) == pytest.approx(float(agg[f"{name}@3"]))
    with pytest.raises(RuntimeError, match="keep_per_user"):
        RankingMetrics([1], 6, POPULARITY).per_user()


def test_threshold_none_makes_every_heldout_item_relevant() -> None:
    # Now u0 Rel = {2, 4, 5}: top-3 [3, 2, 4] hits 0 1 1; u1 Rel = {5, 0}: [5, 0, 2] hits 1 1 0;
    # u2 Rel = {1} is ranked: top-3 [1, 0, 2] hits 1 0 0; u3 and u4 unchanged.
    metric = RankingMetrics([1, 3], 6, POPULARITY, relevance_threshold=None)
    got = _run(metric, _hand_data(), SCORES, chunk=5)
    assert got["users_ranked"] == 5 and got["users_skipped"] == 0
    # recall@3: (2/3 + 2/2 + 1 + 1 + 0) / 5
    assert got["recall@3"] == pytest.approx((2 / 3 + 1 + 1 + 1 + 0) / 5)
    # hit_rate@1: users 1 (item 5) and 2 (item 1) hit at rank 1.
    assert got["hit_rate@1"] == pytest.approx(2 / 5)
    # ndcg@3, u0: DCG = 1/log2(3) + 1/log2(4), IDCG over min(3, 3) = 1 + 1/log2(3) + 1/log2(4);
    # u1: DCG = 1 + 1/log2(3) = IDCG over 2 items -> 1; u2: 1; u3: 1/log2(3); u4: 0.
    assert got["ndcg@3"] == pytest.approx(((L3 + L4) / (1 + L3 + L4) + 1 + 1 + L3 + 0) / 5)


def test_no_relevant_user_only_is_counted_as_skipped() -> None:
    data = EvalData(2, 6, [], [], [0, 1], [1, 2], [1.0, 3.0])
    metric = RankingMetrics([2], 6, POPULARITY)
    got = _run(metric, data, torch.rand(2, 6), chunk=2)
    assert got["users_ranked"] == 0 and got["users_skipped"] == 2
    assert math.isnan(got["recall@2"]) and math.isnan(got["popularity@2"])
    assert got["coverage@2"] == 0.0


def test_head_mask_boundaries() -> None:
    pop = torch.tensor(POPULARITY)
    assert head_mask(pop, 0.8).tolist() == [True, True, False, False, False, False]
    assert head_mask(pop, 0.81).tolist() == [True, True, True, False, False, False]
    assert head_mask(pop, 1.0).tolist() == [True, True, True, True, True, False]  # zero-count item never head
    assert not head_mask(pop, 0.0).any()
    # Ties at the boundary go to the lower item index (stable sort).
    # [1, 2, 2, 1], share 0.25 of 6 = 1.5: item 1 (0 before it) is head, item 2 (2 before it) is not.
    assert head_mask(torch.tensor([1, 2, 2, 1]), 0.25).tolist() == [False, True, False, False]


# --- top-K ordering --------------------------------------------------------------------------------------


def test_topk_constant_scores_break_ties_by_index() -> None:
    scores = torch.zeros(3, 8)
    exclude = torch.zeros(3, 8, dtype=torch.bool)
    exclude[1, [0, 2]] = True
    exclude[2, :6] = True
    top = topk_items(scores, exclude, 4)
    assert top.tolist() == [[0, 1, 2, 3], [1, 3, 4, 5], [6, 7, NO_ITEM, NO_ITEM]]
    # k beyond the catalog: padded with NO_ITEM, which is never a hit.
    assert topk_items(torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool), 5).tolist() == [
        [0, 1, 2, -1, -1]
    ]


@pytest.mark.parametrize("tie_seed", [None, 0, 3])
def test_topk_matches_stable_sort_exactly(tie_seed: int | None) -> None:
    gen = torch.Generator().manual_seed(0)
    n_rows, n_items = 50, 300
    # Heavy ties (few distinct values), both zeros, infinities, huge and subnormal magnitudes, adjacent floats.
    pool = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 3e38, -3e38, 1e-45, -1e-45, 1e-40,
         1.0000001, 0.99999994, 7.5, -7.5],
        dtype=torch.float32,
    )  # fmt: skip
    scores = pool[torch.randint(0, len(pool), (n_rows, n_items), generator=gen)]
    scores[:10] = torch.randn(10, n_items, generator=gen)
    exclude = torch.rand(n_rows, n_items, generator=gen) < 0.3
    k = 40
    tie_rank = None if tie_seed is None else seeded_tie_rank(n_items, tie_seed)
    top = topk_items(scores, exclude, k, tie_rank)
    # Reference: visit the items in tie order, then a stable descending sort keeps equal scores in that order;
    # excluded items pushed to the end. (-0.0 == 0.0 compare equal, so they tie in both.)
    visit = torch.arange(n_items) if tie_rank is None else torch.argsort(tie_rank)
    masked = scores.masked_fill(exclude, float("-inf"))[:, visit]
    order = visit[torch.sort(masked, dim=1, descending=True, stable=True).indices]
    for r in range(n_rows):  # reference built per row on purpose: independent of the vectorised code
        rankable = [int(i) for i in order[r] if not exclude[r, i]]
        expected = (rankable + [NO_ITEM] * k)[:k]
        assert top[r].tolist() == expected, r


def test_seeded_tie_order_is_a_permutation_fixed_by_the_seed() -> None:
    first = seeded_tie_rank(1000, 42)
    assert sorted(first.tolist()) == list(range(1000))
    assert torch.equal(first, seeded_tie_rank(1000, 42))
    assert not torch.equal(first, seeded_tie_rank(1000, 43))
    # Constant scores (every item ties): the top 10 follow the seeded order, not the item index.
    top = topk_items(torch.zeros(2, 1000), torch.zeros(2, 1000, dtype=torch.bool), 10, first)
    assert top[0].tolist() == top[1].tolist() == torch.argsort(first)[:10].tolist() != list(range(10))
    # Low ids gain nothing: over many seeds the mean id of the tied top 10 sits near the catalogue's middle.
    means = [float(torch.argsort(seeded_tie_rank(1000, s))[:10].double().mean()) for s in range(200)]
    assert abs(float(np.mean(means)) - 499.5) < 30


def test_ranking_metrics_break_ties_by_the_seeded_order() -> None:
    """The hand-computed table under a tie seed: user 1's tied items (0, 2, 4 at .5) and user 4's constant row are
    taken in the seed's item order, which their mean popularity@3 shows exactly; users 0 and 3 have no ties
    inside their top 3 and keep the table's values."""
    for seed in range(6):
        metric = RankingMetrics([3], 6, POPULARITY, keep_per_user=True, tie_seed=seed)
        _run(metric, _hand_data(), SCORES, chunk=2)
        order = torch.argsort(seeded_tie_rank(6, seed)).tolist()  # the items, first tie winner first
        user1 = [5] + [i for i in order if i in (0, 2, 4)][:2]
        user4 = order[:3]
        pu = metric.per_user()
        expected = [4 / 3, sum(POPULARITY[i] for i in user1) / 3, 1 / 2, sum(POPULARITY[i] for i in user4) / 3]
        assert pu["popularity@3"].tolist() == pytest.approx(expected), seed
        assert pu["hit_rate@3"].tolist() == [1, 1, 1, float(5 in user4)], seed


def test_topk_never_returns_excluded_items_and_accepts_other_dtypes() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(20, 50, generator=gen)
    exclude = torch.rand(20, 50, generator=gen) < 0.9
    top = topk_items(scores, exclude, 10)
    valid = top >= 0
    assert not exclude.gather(1, top.clamp(min=0))[valid].any()
    assert torch.equal(valid.sum(1), (~exclude).sum(1).clamp(max=10))
    assert torch.equal(topk_items(scores.double(), exclude, 10), top)
    assert torch.equal(topk_items(scores.half(), exclude, 10), topk_items(scores.half().float(), exclude, 10))


def test_dense_masks() -> None:
    batch = next(iter(_hand_data().batches(5)))
    exclude, relevant = dense_masks(batch, 6, 4.0)
    assert exclude.shape == relevant.shape == (5, 6)
    assert exclude.nonzero().tolist() == [list(p) for p in EXCLUDE]
    assert relevant.nonzero().tolist() == [[0, 2], [0, 5], [1, 5], [3, 5], [4, 5]]
    _, relevant_all = dense_masks(batch, 6, None)
    assert int(relevant_all.sum()) == len(HELDOUT)


# --- random data: torchmetrics cross-check, chunking invariance, state merging ----------------------------


def _random_eval(seed: int, n_users: int = 40, n_items: int = 60):
    rng = np.random.default_rng(seed)
    # Per user: a random number of excluded items (some users keep fewer than K rankable items) and held-out
    # items disjoint from them, with ratings 1..5 (some users get no relevant one).
    ex_u, ex_i, ho_u, ho_i, ho_r = [], [], [], [], []
    for u in range(n_users):  # test-data generation only
        perm = rng.permutation(n_items)
        n_ex = int(rng.choice([0, 5, 20, n_items - 6, n_items - 3]))
        n_ho = min(int(rng.integers(0, 6)), n_items - n_ex)
        ex_u += [u] * n_ex
        ex_i += perm[:n_ex].tolist()
        ho_u += [u] * n_ho
        ho_i += perm[n_ex : n_ex + n_ho].tolist()
        ho_r += rng.integers(1, 6, n_ho).tolist()
    data = EvalData(n_users, n_items, ex_u, ex_i, ho_u, ho_i, ho_r)
    # Strictly positive, tie-free scores: torchmetrics 1.9's recall/precision/MRR count a relevant item as
    # retrieved only when its score is > 0 (`torch.where(preds > 0, target, 0)`), a convention we don't have.
    scores = torch.from_numpy(rng.random((n_users, n_items)) + 0.01).float()
    popularity = torch.from_numpy(rng.integers(0, 50, n_items))
    return data, scores, popularity, np.array(ex_u, dtype=int), np.array(ex_i, dtype=int)


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_check_against_torchmetrics_retrieval(seed: int) -> None:
    data, scores, popularity, ex_u, ex_i = _random_eval(seed)
    n_users, n_items = scores.shape
    ks = [1, 5, 10]
    ours = RankingMetrics(ks, n_items, popularity, relevance_threshold=4.0)
    for batch in data.batches(7):
        ours.update(scores[batch["users"]], batch)
    got = ours.compute()

    # torchmetrics' view: one query per evaluated user over its *rankable* items only (excluded items are
    # removed beforehand), binary targets (rating >= 4). empty_target_action="skip" drops users with no
    # relevant item, as we do.
    batch = next(iter(data.batches(n_users)))
    exclude, relevant = dense_masks(batch, n_items, 4.0)
    keep = ~exclude
    rows = torch.arange(len(batch["users"]))[:, None].expand(-1, n_items)[keep]
    preds = scores[batch["users"]][keep]
    target = relevant[keep]
    for k in ks:
        reference = {
            "recall": RetrievalRecall(top_k=k, empty_target_action="skip"),
            # NDCG: torchmetrics uses graded gains; binary targets make them our binary gains. Its ideal DCG
            # sorts the query's targets and truncates at k, i.e. min(k, |Rel|) ones -- our IDCG.
            "ndcg": RetrievalNormalizedDCG(top_k=k, empty_target_action="skip"),
            "hit_rate": RetrievalHitRate(top_k=k, empty_target_action="skip"),
            "mrr": RetrievalMRR(top_k=k, empty_target_action="skip"),
            # Precision divides by k even when the user has fewer than k rankable items (adaptive_k=False),
            # like ours. Recall divides by |Rel| (not min(k, |Rel|)) in both.
            "precision": RetrievalPrecision(top_k=k, empty_target_action="skip"),
        }
        for name, metric in reference.items():
            expected = float(metric(preds, target, indexes=rows))
            assert float(got[f"{name}@{k}"]) == pytest.approx(expected, abs=1e-6), f"{name}@{k}"
    assert int(got["users_ranked"]) == int((relevant.sum(1) > 0).sum())
    assert int(got["users_ranked"] + got["users_skipped"]) == data.n_users_eval


def test_beyond_accuracy_against_numpy() -> None:
    data, scores, popularity, _, _ = _random_eval(2)
    metric = RankingMetrics([10], scores.shape[1], popularity, head_share=0.5)
    for batch in data.batches(9):
        metric.update(scores[batch["users"]], batch)
    got = metric.compute()
    batch = next(iter(data.batches(10_000)))
    exclude, relevant = dense_masks(batch, scores.shape[1], 4.0)
    ranked = relevant.any(1)
    top = topk_items(scores[batch["users"]][ranked], exclude[ranked], 10).numpy()
    recs = top[top >= 0]
    tail = ~head_mask(popularity, 0.5).numpy()
    assert float(got["coverage@10"]) == pytest.approx(np.unique(recs).size / scores.shape[1])
    assert float(got["popularity@10"]) == pytest.approx(popularity.numpy()[recs].mean())
    assert float(got["long_tail@10"]) == pytest.approx(tail[recs].mean())


def test_chunking_invariance() -> None:
    data, scores, popularity, _, _ = _random_eval(3)
    results = []
    per_user = []
    for chunk in (1, 7, data.n_users_eval):
        metric = RankingMetrics([5, 20], scores.shape[1], popularity, keep_per_user=True)
        results.append(_run(metric, data, scores, chunk))
        per_user.append(metric.per_user())
    for other in results[1:]:
        assert other.keys() == results[0].keys()
        for key in other:
            assert other[key] == pytest.approx(results[0][key], abs=1e-12), key
    for other in per_user[1:]:
        for key in other:
            torch.testing.assert_close(other[key], per_user[0][key], rtol=0, atol=1e-12, equal_nan=True)


def test_two_updates_and_merged_states_equal_one_update() -> None:
    data, scores, popularity, _, _ = _random_eval(4)
    whole = next(iter(data.batches(10_000)))
    one = RankingMetrics([3, 10], scores.shape[1], popularity)
    one.update(scores[whole["users"]], whole)
    expected = one.compute()

    first, *rest = list(data.batches(data.n_users_eval // 2 + 1))
    two = RankingMetrics([3, 10], scores.shape[1], popularity)
    for b in (first, *rest):
        two.update(scores[b["users"]], b)
    # Separate metrics merged, as torchmetrics does across DDP ranks.
    left = RankingMetrics([3, 10], scores.shape[1], popularity)
    right = RankingMetrics([3, 10], scores.shape[1], popularity)
    left.update(scores[first["users"]], first)
    for b in rest:
        right.update(scores[b["users"]], b)
    left.merge_state(right)
    for got in (two.compute(), left.compute()):
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-12, equal_nan=True)


def test_update_rejects_wrong_scores_shape_and_bad_config() -> None:
    batch = next(iter(_hand_data().batches(5)))
    metric = RankingMetrics([1], 6, POPULARITY)
    with pytest.raises(ValueError, match="scores must be"):
        metric.update(torch.zeros(5, 7), batch)
    with pytest.raises(ValueError, match="eval.ks"):
        RankingMetrics([0, 5], 6, POPULARITY)
    with pytest.raises(ValueError, match="item_popularity"):
        RankingMetrics([5], 7, POPULARITY)
    with pytest.raises(ValueError, match="head_share"):
        RankingMetrics([5], 6, POPULARITY, head_share=1.5)


def test_rating_metrics_match_numpy() -> None:
    rng = np.random.default_rng(0)
    pred = rng.uniform(1, 5, 1000)
    target = rng.integers(1, 6, 1000).astype(float)
    metric = RatingMetrics()
    assert metric.update_count == 0
    metric.update(torch.tensor(pred[:300]), torch.tensor(target[:300]))
    metric.update(torch.tensor(pred[300:]), torch.tensor(target[300:]))
    assert metric.update_count == 2
    got = metric.compute()
    assert set(got) == {"rmse", "mae"}
    assert float(got["rmse"]) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)), rel=1e-5)
    assert float(got["mae"]) == pytest.approx(np.mean(np.abs(pred - target)), rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_fast_topk_matches_exact_keys(seed: int) -> None:
    """The float fast path must give exactly the exact-key answer, ties, exclusions and NaN included."""
    from recarena.evaluation.ranking import topk_items_exact

    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(64, 300, generator=g)
    scores[::3] = torch.round(scores[::3] * 2) / 2  # coarse values: many ties in a third of the rows
    scores[5, :7] = float("nan")
    scores[6, 10] = float("inf")
    exclude = torch.rand(64, 300, generator=g) < 0.3
    exclude[7, 5:] = True  # a user with fewer rankable items than k
    tie_rank = seeded_tie_rank(300, seed)
    pairs = tuple(exclude.nonzero().T)  # the same exclusion as (rows, items) pairs, as the evaluator passes it
    for k in (1, 10, 20):
        expected = topk_items_exact(scores, exclude, k)
        assert torch.equal(topk_items(scores, exclude, k), expected)
        assert torch.equal(topk_items(scores, pairs, k), expected)
        assert torch.equal(topk_items_exact(scores, pairs, k), expected)
        tied = topk_items_exact(scores, exclude, k, tie_rank)
        assert torch.equal(topk_items(scores, exclude, k, tie_rank), tied)
        scratch = scores.clone()
        assert torch.equal(topk_items(scratch, pairs, k, tie_rank, overwrite=True), tied)
        assert torch.isneginf(scratch[exclude]).all()  # written in place, and only where excluded
        assert torch.equal(scratch[~exclude].nan_to_num(), scores[~exclude].nan_to_num())


def test_matmul_into_writes_float32_scores_into_the_block_even_under_bf16_autocast() -> None:
    """The evaluator's scores block: ``matmul_into`` fills the given float32 block (a view of a larger one, as the
    last chunk's is) and returns it; under bf16 autocast the plain product would be bfloat16 (ties), the block's
    is the float32 product of the inputs it was given."""
    torch.manual_seed(0)
    users, items = torch.randn(5, 8), torch.randn(7, 8)
    block = torch.full((9, 7), float("nan"))[:5]
    assert torch.equal(matmul_into(users, items.T), users @ items.T)  # no block: a fresh product
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (users @ items.T).dtype == torch.bfloat16
        written = matmul_into(users.bfloat16(), items.T, block)
    assert written.data_ptr() == block.data_ptr() and written.dtype == torch.float32
    torch.testing.assert_close(written, users.bfloat16().float() @ items.T)
