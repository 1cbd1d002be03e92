"""What every family shares: optimiser and scheduler from config, the evaluation loop, logging.

A family subclasses :class:`RecommenderModule` and owns only its network, ``forward(users, items)`` (the score or
predicted rating of given pairs) and, where it can, ``user_embeddings`` / ``item_embeddings`` so full-catalogue
ranking is one matrix product. Everything else (training step through the ``loss=`` module, validation and test
through the shared evaluator) lives here, so every family is scored by the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.nn import functional as F

from recarena.evaluation.metrics import RankingMetrics, RatingMetrics
from recarena.losses.base import Loss
from recarena.optim import split_sparse_dense
from recarena.schema import Schema


class RecommenderModule(L.LightningModule):
    """Base LightningModule of every family.

    Args:
        schema: dataset dimensions (a :class:`Schema` or its dict, as restored from a checkpoint).
        loss: the ``loss=`` module.
        optimizer: a partial optimiser class (Hydra ``_partial_: true``) applied to this module's parameters.
        scheduler: a partial scheduler factory from :mod:`recarena.optim` (called with the optimiser and the
            run's total steps), or None for a constant learning rate.
        ks, relevance_threshold, head_share, tie_seed: evaluator settings (``conf/eval``).
        compile_step: the ``compile`` option: False (eager), True (torch.compile's default mode) or a mode name;
            see :meth:`training_loss`.
    """

    #: Capabilities a loss may ask for (``Loss.needs``):
    #:   "ratings"     -- ``rating(batch)``: predicted rating of each training row (and ``predict_ratings``);
    #:   "scores"      -- ``score(batch, items)``: ranking score of each row's user for one item per row;
    #:   "embeddings"  -- ``user_vectors(batch)`` / ``item_vectors(items)``, whose dot product is ``score``;
    #:   "triplets"    -- ``embed_items(items)`` trained on (anchor, positive, negative) item triplets;
    #:   "no_training" -- fitted in setup, no epochs (popularity, EASE, ItemKNN);
    #:   "alternating" -- ``sweep()``: exact alternating solves, one per epoch (iALS, ``loss=als``).
    #: and what a trained run offers (``recarena`` commands and the API read these, never probe methods):
    #:   "item_vectors"   -- ``item_similarity_vectors()``: item vectors (PCA in ``explain`` and W&B, cosine similar);
    #:   "similar_items"  -- ``similar_items(item)``: ``recarena similar``;
    #:   "item_biases"    -- ``item_biases()``: ``recarena explain``'s bias table;
    #:   "made_up_users"  -- ``score_rated(...)``: ``recommend(liked=...)`` for users given as ratings;
    #:   "keyword_search" -- ``embed_descriptors(...)``: ``recarena search``;
    #:   "export"         -- ``user_embeddings()`` / ``item_embeddings()`` whose ``loss.compare`` is the score:
    #:                       ``recarena export`` and the numpy serving path.
    provides: ClassVar[frozenset[str]] = frozenset()
    #: The family needs every evaluated user to have an id seen in training (refuses split=users).
    needs_user_ids: ClassVar[bool] = True
    #: What the family does at test time with ratings it did not train on (``eval.test_known=train+val``): "read"
    #: -- it reads users (or refits itself) from the ratings given (:meth:`read_inputs`): fitted families,
    #: families that build users from their ratings, iALS by folding users in; "refit" -- its users are ids
    #: learnt by gradient, so :mod:`recarena.run` retrains it on train + validation for the validation-best
    #: number of epochs.
    test_inputs: ClassVar[str] = "refit"
    #: The family's data preparation, if it has one: a class of the data layer built from the datamodule once per
    #: corpus and split (``dm.prepared``), which ``attach`` and the training view read (siamese: its descriptors and
    #: triplets; twotower: its context tables and item features). :func:`recarena.build.build_datamodule` hands it
    #: to the datamodule.
    prepares: ClassVar[Callable[[Any], Any] | None] = None

    def __init__(
        self,
        schema: Schema | dict[str, Any],
        loss: Loss,
        optimizer: partial | None = None,
        scheduler: partial | None = None,
        ks: tuple[int, ...] = (10, 20),
        relevance_threshold: float | None = 4.0,
        head_share: float = 0.8,
        tie_seed: int | None = None,
        compile_step: bool | str = False,
    ) -> None:
        super().__init__()
        self.schema = schema if isinstance(schema, Schema) else Schema(**schema)
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ks = tuple(int(k) for k in ks)
        self.relevance_threshold = relevance_threshold
        self.head_share = head_share
        self.tie_seed = tie_seed
        self.compile_step = compile_step
        self._step_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor] = self.training_loss
        # We own the optimisation loop: a Lightning step carries several mini-batches (see ShuffledBatches).
        self.automatic_optimization = False
        self.train_loss_sum = torch.zeros(())
        self.train_batches = 0
        self._bare_steps = False  # set when training starts: see bare_steps_apply
        self._epoch_started = 0.0
        self._scores: torch.Tensor | None = None  # the evaluation's scores block: see _score_block

    # Lightning assigns ``_current_fx_name`` around every hook it calls, ~45 times per training step, and our
    # step updates two counters; ``nn.Module.__setattr__`` checks each value against parameters, buffers and
    # submodules, which at MF speeds is ~10% of a CPU step. Attributes known never to hold those skip the checks.
    _PLAIN_ATTRIBUTES: ClassVar[frozenset[str]] = frozenset({"_current_fx_name", "train_loss_sum", "train_batches"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ family API
    @property
    def predicts_ratings(self) -> bool:
        """RMSE/MAE are reported only when the family predicts ratings *and* was trained to: MF trained by a
        ranking loss (BPR, in-batch softmax) outputs scores on no rating scale."""
        return "ratings" in self.provides and "ratings" in self.loss_fn.needs

    @property
    def trainable(self) -> bool:
        return "no_training" not in self.provides

    @classmethod
    def sparse_embeddings(cls, optimizer: partial | None) -> bool:
        """Build embedding tables with sparse gradients when the optimiser updates rows lazily."""
        return bool(getattr(getattr(optimizer, "func", None), "sparse_gradients", False))

    # Training-time calls take the batch, because a row's user may be more than an id: a feature-based family
    # builds it from context the view put in the batch (e.g. ``rows``, the corpus row of each example, to look
    # up the history before it). Evaluation-time calls take user ids: a user as of the end of training.
    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted rating (or score) of each (user, item) pair at evaluation time. (N,), (N,) -> (N,)."""
        raise NotImplementedError

    def rating(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Predicted rating of each training row, ``(B,)``. Id-based families: ``forward(users, items)``."""
        return self(batch["users"], batch["items"])

    def rating_and_penalty(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rating(batch), penalty(batch))`` for rating regression. A family whose penalty reads the rows the
        prediction gathers (MF's touched-rows L2) computes both from one lookup."""
        return self.rating(batch), self.penalty(batch)

    def score_and_penalty(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score(batch, batch["items"]), penalty(batch))``: each row's score for its own item, with the
        regulariser, for ranking losses. MF computes both from one lookup, as :meth:`rating_and_penalty`."""
        return self.score(batch, batch["items"]), self.penalty(batch)

    def score(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """Ranking score of each training row's user for ``items[r]`` (one item per row), ``(B,)``, before
        any squashing. Default: the dot product of the row's user vector and the item's vector."""
        return (self.user_vectors(batch) * self.item_vectors(items)).sum(-1)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, D)`` user representation of each training row (families with "embeddings")."""
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` item representations (families with "embeddings")."""
        raise NotImplementedError

    def score_all(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every catalogue item for each user: (B,) -> (B, n_items). Higher = recommended first.
        Written into ``out`` (float32, (B, n_items)) and returned when given: the evaluator's block, reused by every
        chunk (:func:`~recarena.evaluation.ranking.matmul_into` says why); otherwise a fresh tensor, not a view of
        the model's own. Either way the evaluator overwrites it in place."""
        raise NotImplementedError

    def item_similarity_vectors(self) -> torch.Tensor | None:
        """``(n_items, D)`` item vectors whose cosine says how alike two movies are (``recarena similar``), or None
        when the family has none (popularity). Default: the triplet encoder's embeddings of families trained on
        item triplets; families with an item embedding override it (without bias columns: a bias is a
        popularity, not a direction, and would pull every popular movie towards every other)."""
        if "triplets" in self.provides:
            return self.embed_items(torch.arange(self.schema.n_items, device=self.device))
        return None

    def similar_items(self, item: int) -> torch.Tensor | None:
        """``(n_items,)`` how alike each movie is to ``item`` (``recarena similar``; higher = more alike), or None
        when the family cannot say. Default: the cosine of :meth:`item_similarity_vectors`; neighbourhood families
        (EASE, ItemKNN) override it with their own item-item weights."""
        vectors = self.item_similarity_vectors()
        if vectors is None:
            return None
        unit = F.normalize(vectors.detach().float(), dim=-1)  # (n_items, D)
        return unit @ unit[item]

    @classmethod
    def compares_items(cls) -> bool:
        """Whether :meth:`similar_items` answers (declared ``similar_items``): the families ``similar`` works with."""
        return "similar_items" in cls.provides

    def predict_ratings(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings clipped to the rating scale, for RMSE/MAE."""
        return self(users, items).clamp(self.schema.rating_low, self.schema.rating_high)

    def penalty(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Regulariser added to the loss (e.g. L2 on the rows the batch touches). Zero by default."""
        return torch.zeros((), device=self.device)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        self.attach(self.trainer.datamodule)

    def attach(self, datamodule: Any) -> None:
        """Everything the module derives from the data before a step: the evaluator's metrics (training item
        popularity for bias metrics), the loss's statistics, and in feature families their tables. Lightning
        calls it from ``setup``; a bare loop (``bench/throughput.py``) calls it directly."""
        popularity = torch.as_tensor(datamodule.item_popularity, dtype=torch.float32)
        self.on_popularity(popularity)
        self.loss_fn.setup(datamodule)
        make = partial(
            RankingMetrics,
            ks=list(self.ks),
            n_items=self.schema.n_items,
            item_popularity=popularity,
            head_share=self.head_share,
            relevance_threshold=self.relevance_threshold,
            tie_seed=self.tie_seed,
        )
        self.val_ranking, self.test_ranking = make(), make()
        self.val_rating, self.test_rating = RatingMetrics(), RatingMetrics()

    def on_popularity(self, popularity: torch.Tensor) -> None:
        """Hook for families that use training popularity (the popularity baseline)."""

    def read_inputs(self, corpus: Any, split: Any, rows: Any) -> None:
        """Families with ``test_inputs = "read"``: from now on, read users from the corpus ``rows`` (training,
        known and validation ratings under ``eval.test_known=train+val``) instead of the training ones."""
        raise NotImplementedError(f"{type(self).__name__} declares test_inputs={self.test_inputs!r}")

    def on_test_start(self) -> None:
        """After the best checkpoint is loaded: a "read" family takes the ratings the test may know."""
        dm = self.trainer.datamodule
        if getattr(dm, "test_known", "train") != "train" and self.test_inputs == "read":
            self.read_inputs(dm.corpus, dm.split, dm.test_input_rows)

    # ------------------------------------------------------------------ training
    def training_step(self, batches: list[dict[str, torch.Tensor]], batch_idx: int) -> None:
        """One optimiser step per mini-batch, through Lightning's optimiser wrapper and ``manual_backward``,
        so mixed precision, DDP and the step counter behave as under automatic optimisation."""
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        for batch in batches:
            loss = self._step_loss(batch)
            if self._bare_steps:
                _bare_step(optimizer, loss)
            else:
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            # Accumulate instead of self.log per step: logging each step costs as much as an MF step on CPU.
            self.train_loss_sum = self.train_loss_sum.to(loss.device) + loss.detach()
            self.train_batches += 1

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one mini-batch, what ``compile`` compiles: the family's forward and the loss, whose
        backward torch.compile's AOTAutograd compiles with it. The optimiser step stays eager: ``optimizer.fused``
        chooses torch's fused Adam kernels instead, and the row-wise updates of ``optimizer=sparse_adam`` index
        rows whose number changes with every batch, which does not trace into one graph."""
        return self.loss_fn(self, batch)

    def on_train_start(self) -> None:
        self._bare_steps = bare_steps_apply(self.trainer)
        if self.compile_step:
            # dynamic=False: a run has two batch shapes (full batches and an epoch's last, shorter one), each
            # compiled once, which is faster than one shape-generic graph.
            mode = None if self.compile_step is True else str(self.compile_step)
            self._step_loss = torch.compile(self.training_loss, mode=mode, dynamic=False)

    def on_train_epoch_start(self) -> None:
        self.train_loss_sum = torch.zeros((), device=self.device)
        self.train_batches = 0
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        if self.train_batches:
            self.log("train/loss", self.train_loss_sum / self.train_batches, prog_bar=True)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, torch.Tensor], ranking: RankingMetrics, rating: RatingMetrics) -> None:
        scores = self.score_all(batch["users"], out=self._score_block(len(batch["users"])))  # the metric writes into it
        ranking.update(scores, batch, overwrite=True)
        if self.predicts_ratings and batch["held_item"].numel():
            users = batch["users"][batch["held_row"]]
            rating.update(self.predict_ratings(users, batch["held_item"]), batch["held_rating"])

    def _score_block(self, rows: int) -> torch.Tensor:
        """``(rows, n_items)`` float32 scores block, allocated by the first chunk of an evaluation and reused by the
        next ones (float32 whatever a precision plugin makes the default dtype: the evaluator's ``overwrite`` path
        writes into float32 scores only)."""
        block = self._scores
        if block is None or len(block) < rows or block.device != self.device:
            block = self._scores = torch.empty(rows, self.schema.n_items, dtype=torch.float32, device=self.device)
        return block[:rows]

    def _release_score_block(self) -> None:
        """Drop the scores block at an evaluation's start and end (Lightning's epoch hooks; a hand loop over
        ``_eval_step`` calls it after), so training never holds it and no evaluation writes into one that another
        made under inference mode."""
        self._scores = None

    def _eval_epoch_end(self, prefix: str, ranking: RankingMetrics, rating: RatingMetrics) -> None:
        self._release_score_block()
        values = {f"{prefix}/{k}": v for k, v in ranking.compute().items()}
        if self.predicts_ratings and rating.update_count:
            values.update({f"{prefix}/{k}": v for k, v in rating.compute().items()})
        # The values are already reduced over processes (torchmetrics syncs its states in compute()), so
        # Lightning's own sync_dist would only average identical numbers.
        self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=False, rank_zero_only=False)
        ranking.reset()
        rating.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_ranking, self.val_rating)

    def on_validation_epoch_start(self) -> None:
        self._release_score_block()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_ranking, self.val_rating)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_ranking, self.test_rating)

    def on_test_epoch_start(self) -> None:
        self._release_score_block()

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_ranking, self.test_rating)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if not self.trainable or self.optimizer_factory is None:
            return None
        kwargs = {}
        if self.sparse_embeddings(self.optimizer_factory):
            kwargs["sparse_params"] = split_sparse_dense(self)
        optimizer = self.optimizer_factory(self.parameters(), **kwargs)
        if self.scheduler_factory is None:
            return optimizer
        # Every scheduler factory (recarena.optim) takes the run's length and is stepped once per mini-batch.
        total_steps = self.trainer.datamodule.optimizer_steps(int(self.trainer.max_epochs))
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer, total_steps=total_steps)}


#: The hooks Lightning's wrapped step calls around backward and the optimiser step.
_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")


def bare_steps_apply(trainer: L.Trainer) -> bool:
    """Whether a training step may call the torch optimiser and ``backward`` directly: one process, full float32
    precision, and no callback or module implementing a hook of the wrapped step (:data:`_STEP_HOOKS`). Then
    Lightning's wrapper does nothing but call those empty hooks, which costs ~0.5 ms per optimiser step on a CPU,
    about a sixth of an MF step at batch 1024 (``bench/throughput.py``). Mixed precision, DDP or a hooked callback
    take the wrapped path."""
    if type(trainer.strategy) is not SingleDeviceStrategy or type(trainer.precision_plugin) is not Precision:
        return False
    module = trainer.lightning_module
    hooked = [c for c in trainer.callbacks for hook in _STEP_HOOKS if is_overridden(hook, c, L.Callback)]
    return not hooked and not any(is_overridden(hook, module, L.LightningModule) for hook in _STEP_HOOKS)


def _bare_step(optimizer: LightningOptimizer, loss: torch.Tensor) -> None:
    """zero_grad, backward and step on the torch optimiser, with Lightning's step counting kept (the global step,
    which checkpoints and resuming read)."""
    raw = optimizer.optimizer
    raw.zero_grad()
    loss.backward()
    optimizer._on_before_step()  # noqa: SLF001 (the manual loop's step counter; see bare_steps_apply)
    raw.step()
    optimizer._on_after_step()  # noqa: SLF001
