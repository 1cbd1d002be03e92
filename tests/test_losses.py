"""Ranking losses: exact corrections on hand-built batches, sampling invariants, end-to-end training of model=mf."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from recarena.checks import check_config, compatible_losses
from recarena.errors import ConfigError
from recarena.losses import (
    BPRLoss,
    FrequencyQ,
    InBatchSoftmaxLoss,
    LogQCorrectedSoftmaxLoss,
    MixedNegativeSamplingLoss,
    StreamingQ,
)
from recarena.run import train
from recarena.schema import Schema
from tests.conftest import compose_config

N_USERS, N_ITEMS = 5, 6
# Training positives of the fake datamodule: item 3 five times, item 1 three times, items 4 and 0 once (N = 10).
TRAIN_USERS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
TRAIN_ITEMS = torch.tensor([3, 3, 3, 3, 3, 1, 1, 1, 4, 0])
P = {0: 0.1, 1: 0.3, 2: 0.0, 3: 0.5, 4: 0.1, 5: 0.0}
# A batch with repeated positives (item 3 three times, item 1 twice); B = 6.
BATCH = {"users": torch.tensor([0, 1, 2, 0, 3, 4]), "items": torch.tensor([3, 1, 3, 4, 1, 3])}


class Towers(nn.Module):
    """A family stand-in: fixed random user/item vectors, score = their dot product."""

    def __init__(self, n_users: int = N_USERS, n_items: int = N_ITEMS, dim: int = 3) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.users = nn.Parameter(torch.randn(n_users, dim, generator=generator))
        self.items = nn.Parameter(torch.randn(n_items, dim, generator=generator))
        self.schema = Schema(n_users=n_users, n_items=n_items, rating_low=1.0, rating_high=5.0, global_mean=3.0)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.users[batch["users"]]

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.items[items]

    def score(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return (self.user_vectors(batch) * self.item_vectors(items)).sum(-1)

    def penalty(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.zeros(())

    def score_and_penalty(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(batch, batch["items"]), self.penalty(batch)


def fake_datamodule(users: torch.Tensor = TRAIN_USERS, items: torch.Tensor = TRAIN_ITEMS, n_items: int = N_ITEMS):
    schema = Schema(n_users=int(users.max()) + 1, n_items=n_items, rating_low=1.0, rating_high=5.0, global_mean=3.0)
    return SimpleNamespace(schema=schema, train_tensors={"users": users, "items": items})


def cosine_logits(model: Towers, columns: list[int], scale: float = 20.0) -> torch.Tensor:
    u = nn.functional.normalize(model.users[BATCH["users"]], dim=-1)
    v = nn.functional.normalize(model.items[torch.tensor(columns)], dim=-1)
    return scale * (u @ v.T)


def check_columns(columns: torch.Tensor, labels: torch.Tensor, items: torch.Tensor) -> None:
    """Distinct columns; each row's positive is exactly one column, its label, so never one of its negatives."""
    assert len(torch.unique(columns)) == len(columns)
    assert torch.equal(columns[labels], items)
    assert torch.equal((columns[None, :] == items[:, None]).sum(1), torch.ones_like(items))


# ---------------------------------------------------------------------------------------------- sampled softmax
def test_inbatch_columns_are_the_distinct_positives() -> None:
    model, loss = Towers(), InBatchSoftmaxLoss()
    loss.setup(fake_datamodule())
    logits, labels, columns = loss.logits(model, BATCH)
    assert columns.tolist() == [1, 3, 4] and labels.tolist() == [1, 0, 1, 2, 0, 1]
    check_columns(columns, labels, BATCH["items"])
    torch.testing.assert_close(logits, cosine_logits(model, [1, 3, 4]))
    expected = nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(loss(model, BATCH), expected)


@pytest.mark.parametrize("loss_class", [InBatchSoftmaxLoss, LogQCorrectedSoftmaxLoss])
def test_under_ddp_a_process_scores_its_rows_against_every_process_s_columns(loss_class, monkeypatch) -> None:
    """Process 1 of 2 holding BATCH's last 2 rows (positives 1, 3; the gather stubbed: process 0 holds the first 4):
    its logits, labels and LogQ correction are the single-process batch's rows 4-5, over the columns [1, 3, 4] of
    all 6 positives with B = 6. Without ``across_processes`` its columns are its own positives [1, 3] only."""
    from recarena.losses import sampled_softmax

    model, whole = Towers(), loss_class()
    whole.setup(fake_datamodule())
    expected, expected_labels, columns = whole.logits(model, BATCH)
    mine = {name: column[4:] for name, column in BATCH.items()}
    monkeypatch.setattr(sampled_softmax, "gather_rows", lambda items: (torch.cat([BATCH["items"][:4], items]), 4))
    gathered, own = loss_class(), loss_class(across_processes=False)
    for loss in (gathered, own):
        loss.setup(fake_datamodule())
    logits, labels, got = gathered.logits(model, mine)
    assert got.tolist() == [1, 3, 4] and torch.equal(labels, expected_labels[4:])
    torch.testing.assert_close(logits, expected[4:])
    logits, labels, got = own.logits(model, mine)
    assert got.tolist() == [1, 3] and logits.shape == (2, 2)


def test_inbatch_dot_similarity_is_the_family_score() -> None:
    model, loss = Towers(), InBatchSoftmaxLoss(similarity="dot", scale=1.0)
    logits, labels, columns = loss.logits(model, BATCH)
    torch.testing.assert_close(logits.gather(1, labels[:, None]).squeeze(1), model.score(BATCH, BATCH["items"]))


def test_logq_subtracts_log_q_from_every_column() -> None:
    model, loss = Towers(), LogQCorrectedSoftmaxLoss()
    loss.setup(fake_datamodule())
    logits, labels, columns = loss.logits(model, BATCH)
    assert columns.tolist() == [1, 3, 4] and labels.tolist() == [1, 0, 1, 2, 0, 1]
    b = len(BATCH["items"])
    log_q = torch.tensor([math.log(1 - (1 - P[x]) ** b) for x in (1, 3, 4)])  # the positive's column included
    torch.testing.assert_close(logits, cosine_logits(model, [1, 3, 4]) - log_q[None, :])
    # Popular item 3 (Q ~ 0.98) is barely corrected, rare item 4 (Q ~ 0.47) is lifted.
    assert abs(log_q[1]) < 0.02 < abs(log_q[2])


def test_mns_pool_probability_and_shared_columns() -> None:
    model, loss = Towers(), MixedNegativeSamplingLoss(n_sampled=8)
    loss.setup(fake_datamodule())
    torch.manual_seed(123)
    sampled = torch.randint(N_ITEMS, (8,))  # the draw the loss makes under the same seed
    torch.manual_seed(123)
    logits, labels, columns = loss.logits(model, BATCH)
    expected_columns = sorted(set(BATCH["items"].tolist()) | set(sampled.tolist()))
    assert columns.tolist() == expected_columns
    assert set(sampled.tolist()) & set(BATCH["items"].tolist())  # a sampled positive is the same column...
    check_columns(columns, labels, BATCH["items"])  # ...and the label of the rows whose positive it is
    b, q_miss_uniform = len(BATCH["items"]), (1 - 1 / N_ITEMS) ** 8
    log_pool = torch.tensor([math.log(1 - (1 - P[x]) ** b * q_miss_uniform) for x in expected_columns])
    torch.testing.assert_close(logits, cosine_logits(model, expected_columns) - log_pool[None, :])


def test_mns_defaults_to_as_many_samples_as_rows() -> None:
    loss = MixedNegativeSamplingLoss()
    loss.setup(fake_datamodule())
    assert loss.draws(BATCH) == len(BATCH["items"])


def test_mask_seen_drops_other_training_positives_of_the_user_only() -> None:
    model, loss = Towers(), InBatchSoftmaxLoss(mask_seen=True)
    loss.setup(fake_datamodule())
    logits, labels, columns = loss.logits(model, BATCH)  # columns [1, 3, 4]
    masked = torch.isinf(logits)
    # Users 0, 1, 2 have training positives {1, 3}, user 3 {3, 4}, user 4 {0, 3}. Row 0 (user 0, label 3): column 1
    # masked, its own label not; row 3 (user 0 again, label 4): both 1 and 3; row 4 (user 3, label 1): 3 and 4;
    # row 5 (user 4): item 0 is no column, nothing masked.
    assert masked.nonzero().tolist() == [[0, 0], [1, 1], [2, 0], [3, 0], [3, 1], [4, 1], [4, 2]]
    assert not masked.gather(1, labels[:, None]).any()
    assert torch.isfinite(loss(model, BATCH))


def test_frequency_q_counts_training_positives() -> None:
    estimator = FrequencyQ()
    estimator.setup(fake_datamodule())
    items = torch.arange(N_ITEMS)
    expected = torch.tensor([7 * math.log1p(-P[x]) for x in range(N_ITEMS)])
    torch.testing.assert_close(estimator.log_miss(items, 7), expected)


def test_streaming_estimator_converges_to_the_batch_inclusion_probability() -> None:
    torch.manual_seed(0)
    n, b, steps = 50, 32, 3000
    p = 1.0 / torch.arange(1, n + 1).double()
    p /= p.sum()  # Zipf-like item shares
    stream = torch.multinomial(p, b * steps, replacement=True).view(steps, b)
    estimator = StreamingQ(alpha=0.01)
    estimator.reset(n)
    for batch in stream:
        estimator.observe(batch)
    truth = 1 - (1 - p) ** b  # P(item in a batch of b draws): from 0.13 to 1.0 here
    error = (estimator.inclusion(torch.arange(n)).double() / truth - 1).abs()
    assert error.mean() < 0.1 and error.max() < 0.25
    assert int(estimator.step) == steps


def test_streaming_first_hit_and_hashing() -> None:
    estimator = StreamingQ(alpha=0.1, buckets=7)
    estimator.reset(7)
    assert int(estimator.bucket(torch.arange(1000)).max()) < 7
    for _ in range(3):
        estimator.observe(torch.tensor([2]))
    estimator.observe(torch.tensor([5]))  # first hit at step 3: 4 steps so far
    assert estimator.inclusion(torch.tensor([2])).item() == pytest.approx(1.0)
    assert estimator.inclusion(torch.tensor([5])).item() == pytest.approx(0.25)


def test_streaming_logq_trains_on_a_batch() -> None:
    model, loss = Towers(), LogQCorrectedSoftmaxLoss(q_estimator="streaming")
    loss.setup(fake_datamodule())
    value = loss(model, BATCH)
    value.backward()
    assert torch.isfinite(value) and model.items.grad.abs().sum() > 0


def test_bad_loss_options() -> None:
    with pytest.raises(ConfigError, match="similarity"):
        InBatchSoftmaxLoss(similarity="l2")
    with pytest.raises(ConfigError, match="q_estimator"):
        LogQCorrectedSoftmaxLoss(q_estimator="oracle")
    with pytest.raises(ConfigError, match="n_negatives"):
        BPRLoss(n_negatives=0)


# ---------------------------------------------------------------------------------------------- BPR
class ItemScores(Towers):
    """score(u, i) = w[i]: the gradient w.r.t. each item's score is readable directly."""

    def __init__(self) -> None:
        super().__init__(n_items=10)
        self.w = nn.Parameter(torch.zeros(10))

    def score(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        return self.w[items]


def test_bpr_gradient_raises_positives_and_lowers_negatives() -> None:
    torch.manual_seed(0)
    model, loss = ItemScores(), BPRLoss(n_negatives=8)
    batch = {"users": torch.arange(4), "items": torch.zeros(4, dtype=torch.long)}  # every positive is item 0
    value = loss(model, batch)
    assert value.item() == pytest.approx(math.log(2))  # all scores equal: -log σ(0)
    value.backward()
    grad = model.w.grad
    assert grad[0] < 0  # descent raises the positive's score
    drawn = grad[1:] != 0
    assert drawn.any() and (grad[1:][drawn] > 0).all()  # ... and lowers every negative drawn
    with torch.no_grad():
        model.w -= 1.0 * grad
    torch.manual_seed(0)
    assert loss(model, batch) < value


def test_bpr_negatives_exclude_seen_positives() -> None:
    users = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    items = torch.cat([torch.arange(10), torch.tensor([0, 1])])  # user 0 likes half the catalogue of 20
    loss = BPRLoss(exclude_seen=True)
    loss.setup(fake_datamodule(users, items, n_items=20))
    torch.manual_seed(0)
    query = torch.tensor([0, 1]).repeat(2000)
    negatives = loss.sample_negatives(query, 20)
    assert not loss.is_seen(query, negatives).any()
    assert negatives[query == 0].min() >= 10 and set(negatives[query == 1].tolist()) == set(range(2, 20))


def test_bpr_with_several_negatives_on_mf() -> None:
    from recarena.models.mf import MatrixFactorization

    schema = Schema(n_users=4, n_items=6, rating_low=1.0, rating_high=5.0, global_mean=3.0)
    model = MatrixFactorization(schema, BPRLoss(n_negatives=3), init_std=0.1)
    batch = {"users": torch.tensor([0, 1, 2, 3]), "items": torch.tensor([5, 5, 4, 5]), "rows": torch.arange(4)}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        value = model.loss_fn(model, batch)
        first = value.item() if first is None else first
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert value.item() < first / 2


# ---------------------------------------------------------------------------------------------- configs and e2e
def test_incompatible_pair_lists_the_losses_that_fit(tmp_path: Path) -> None:
    cfg = compose_config(["model=popularity", "loss=bpr"], tmp_path)
    with pytest.raises(ConfigError, match=r"model=popularity cannot be trained with loss=bpr \(it needs scores\)"):
        check_config(cfg)
    assert {"bpr", "inbatch", "logq", "mns", "mse"} <= set(compatible_losses(compose_config([], tmp_path).model._target_))


@pytest.mark.parametrize("loss", ["bpr", "inbatch", "logq", "mns"])
def test_ranking_losses_follow_the_relevance_threshold(loss: str, tmp_path: Path) -> None:
    cfg = compose_config([f"loss={loss}"], tmp_path)
    assert cfg.loss.positive_threshold == cfg.eval.relevance_threshold == 4.0
    assert cfg.eval.monitor == "val/ndcg@10" and cfg.eval.monitor_mode == "max"
    assert compose_config([f"loss={loss}", "eval.relevance_threshold=null"], tmp_path).loss.positive_threshold is None


def test_recbole_preset_composes(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=mf_bpr_recbole"], tmp_path)
    assert cfg.loss._target_ == "recarena.losses.BPRLoss" and cfg.model._target_.endswith("MatrixFactorization")
    assert cfg.split.name == "random" and cfg.split.per_user and cfg.eval.relevance_threshold is None
    assert cfg.loss.positive_threshold is None and cfg.model.n_factors == 64 and cfg.loss.exclude_seen


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss=bpr"],
        ["loss=inbatch"],
        ["loss=logq"],
        ["loss=mns"],
        ["loss=bpr", "loss.exclude_seen=true", "loss.n_negatives=3"],
        ["loss=inbatch", "loss.mask_seen=true", "loss.similarity=dot", "loss.scale=1"],
        ["loss=logq", "loss.q_estimator=streaming"],
    ],
    ids=lambda o: " ".join(o),
)
def test_mf_trains_with_each_ranking_loss(make_cfg, tmp_path: Path, overrides: list[str]) -> None:
    """A few epochs on the tiny synthetic data: finite loss, and validation NDCG@10 above its first-epoch value."""
    cfg = make_cfg("model=mf", *overrides, "batch_size=256", "trainer.max_epochs=6", "callbacks.early_stopping.patience=10")
    result = train(cfg)
    history = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    losses = history["train/loss"].dropna()
    ndcg = history["val/ndcg@10"].dropna().tolist()[:6]  # one per epoch, then the best checkpoint's again
    assert len(losses) == 6 and losses.map(math.isfinite).all()
    assert len(ndcg) == 6 and max(ndcg[1:]) > ndcg[0]
    assert result["val"]["val/ndcg@10"] == pytest.approx(max(ndcg))  # the best checkpoint is reported
    assert 0 < result["test"]["test/ndcg@10"] <= 1
    assert "test/rmse" not in result["test"]  # a ranking loss gives scores, not ratings
