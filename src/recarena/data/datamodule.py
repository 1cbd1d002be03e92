"""One LightningDataModule for every family: corpus -> curation -> split -> training view + evaluation data.

Every family trains on a view of the same split and is evaluated on the same held-out data, which is what makes
a leaderboard fair. The split is made before any statistic is computed (item popularity, the global mean), and
those statistics use the training part only.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from recarena.data.corpus import Corpus
from recarena.data.curate import curate, curation_key
from recarena.data.heldout import EvalData
from recarena.data.sources import load_corpus
from recarena.data.splits import Split, load_or_make_split, split_stats
from recarena.data.views import ShuffledBatches, residency, view_builder
from recarena.schema import Schema

log = logging.getLogger(__name__)


def corpus_key(corpus: Corpus) -> str:
    """Content hash of the ratings: names the split cache, so a changed corpus never reuses an old split."""
    if "cache_key" in corpus.extra:
        return str(corpus.extra["cache_key"])
    digest = hashlib.blake2b(digest_size=16)
    for array in (corpus.users, corpus.items, corpus.ratings, corpus.timestamps):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


class MovieLensDataModule(L.LightningDataModule):
    """Loads, curates and splits a release once; serves training views and evaluation user-chunks.

    Args:
        data: the ``data=`` config (source, cache dir, curation).
        split: the ``split=`` config.
        seed: run seed (seeds curation sampling and the split unless they set their own).
        batch_size: rows per training batch.
        view: the training view the loss asks for (``Loss.view``, a name in ``recarena.data.views.VIEWS``).
        positive_threshold: ranking losses' positives are training ratings >= this (None = all).
        user_chunk: users per evaluation batch (scores are user_chunk x n_items).
        minibatches_per_step: optimiser steps per Lightning training step (see :class:`ShuffledBatches`).
        shuffle: reshuffle the training rows every epoch (False: one fixed order, as debug=overfit needs).
        view_options: the family's options a view may read (the ``model=`` config; e.g. how ``triplets`` are mined).
        max_eval_users: score a seeded random sample of this many users in validation and test (``eval.max_users``;
            None = every user with a held-out rating). The sample depends on the split and seed only, so every
            family of one sweep is scored on the same users.
        test_known: what a model may know at test time (``eval.test_known``): ``train`` (the training ratings,
            plus held-out users' known ones) or ``train+val`` (also the validation ratings).
        prepare: the family's data preparation (``RecommenderModule.prepares``), called with this datamodule:
            see :attr:`prepared`. None for a family that reads the corpus and split directly.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        split: Mapping[str, Any],
        seed: int = 42,
        batch_size: int = 1024,
        view: str = "pairs",
        user_chunk: int = 2048,
        minibatches_per_step: int = 8,
        shuffle: bool = True,
        positive_threshold: float | None = None,
        view_options: Mapping[str, Any] | None = None,
        max_eval_users: int | None = None,
        test_known: str = "train",
        prepare: Callable[[MovieLensDataModule], Any] | None = None,
    ) -> None:
        super().__init__()
        self.test_known = test_known
        self.max_eval_users = max_eval_users
        self.view_options = dict(view_options or {})
        self.build_view = view_builder(view)
        self.positive_threshold = positive_threshold
        self.data_cfg = data
        self.split_cfg = split
        self.seed = seed
        self.batch_size = batch_size
        self.view = view
        self.user_chunk = user_chunk
        self.minibatches_per_step = minibatches_per_step
        self.shuffle = shuffle
        self.corpus: Corpus | None = None
        self.split: Split | None = None
        self.stats: dict[str, Any] = {}
        self.prepare = prepare
        self._prepared: Any = None

    # ------------------------------------------------------------------ loading
    def prepare_data(self) -> None:
        """Download and parse into the cache (atomic writes: DDP processes that do it at once leave one copy);
        ``setup`` then reads the cache."""
        load_corpus(self.data_cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        raw = load_corpus(self.data_cfg)
        curation = self.data_cfg.get("curation") or {}
        known = self.known_share()
        corpus = curate(raw, curation, self.seed, known)
        cache_dir = Path(str(self.data_cfg["cache_dir"])).expanduser()
        key = f"{corpus_key(raw)}-{curation_key(curation, self.seed, known)}"
        self.use(corpus, load_or_make_split(corpus, self.split_cfg, self.seed, cache_dir, key))

    def known_share(self) -> float:
        """The share of the ratings the split trains on (1 - val_fraction - test_fraction; leave_one_out: 0.8): what
        curation's ``min_item_mean`` may read, by time."""
        val, test = (float(self.split_cfg.get(key, 0.1) or 0.0) for key in ("val_fraction", "test_fraction"))
        return max(1.0 - val - test, 1e-9)

    @property
    def prepared(self) -> Any:
        """The family's data preparation (``RecommenderModule.prepares``, e.g. the siamese descriptors and triplets):
        one object built from this corpus and split on first use, shared by the training view and the family's
        ``attach``; built anew when another corpus or split is used."""
        if self._prepared is None:
            if self.prepare is None:
                raise RuntimeError("this datamodule has no family data preparation: build it with "
                                   "recarena.build.build_datamodule, which passes the family's `prepares`")  # fmt: skip
            self._prepared = self.prepare(self)
        return self._prepared

    def use(self, corpus: Corpus, split: Split) -> None:
        """Serve this (curated) corpus and split: everything derived from them (statistics, schema, training
        view, evaluation data) is computed here. ``setup`` passes what it read from the data cache;
        :func:`recarena.inference.load_run` what a run dir saved, so a loaded run sees exactly what training saw."""
        self.split = split
        self.corpus = corpus
        self._prepared = None  # prepared from the previous corpus or split
        self.stats = split_stats(corpus, self.split)
        self.stats["dropped_rows"] = corpus.n_dropped
        self.stats["duplicate_rows"] = corpus.n_duplicates

        train = self.split.train
        self.item_popularity = np.bincount(corpus.items[train], minlength=corpus.n_items).astype(np.float32)
        self.schema = Schema(
            n_users=corpus.n_users,
            n_items=corpus.n_items,
            rating_low=float(corpus.scale.low),
            rating_high=float(corpus.scale.high),
            global_mean=float(corpus.ratings[train].mean()) if len(train) else 0.0,
            genre_names=list(corpus.genre_names),
        )
        self._train_tensors: dict[str, torch.Tensor] | None = None  # built on first use: see train_tensors
        # Validation ranks items unseen in training; test also excludes validation items (RecBole's protocol).
        # Held-out users of split=users bring their known ratings, which are excluded like training items.
        known = self.split.known
        self.val_data = self._eval_data(np.concatenate([train, known]), self.split.val)
        self.test_data = self._eval_data(np.concatenate([train, known, self.split.val]), self.split.test)

    def _eval_data(self, seen_rows: np.ndarray, heldout_rows: np.ndarray) -> EvalData:
        c = self.corpus
        return EvalData(
            n_users=c.n_users,
            n_items=c.n_items,
            exclude_users=c.users[seen_rows],
            exclude_items=c.items[seen_rows],
            heldout_users=c.users[heldout_rows],
            heldout_items=c.items[heldout_rows],
            heldout_ratings=c.ratings[heldout_rows],
            max_users=self.max_eval_users,
            seed=self.seed,
        )

    @property
    def test_input_rows(self) -> np.ndarray:
        """Corpus rows a model may read users from at test time (``test_known``): training and known ratings,
        plus validation ratings under ``train+val``."""
        parts = [self.split.train, self.split.known]
        if self.test_known == "train+val":
            parts.append(self.split.val)
        return np.sort(np.concatenate(parts))

    def refit_split(self) -> Split:
        """The split with validation merged into training and no validation left: what a family whose users are
        learnt ids is retrained on under ``test_known=train+val``. Test rows are unchanged."""
        s = self.split
        merged = np.sort(np.concatenate([s.train, s.val]))
        return Split(s.name, merged, s.val[:0], s.test, s.known, f"{s.fingerprint}+val", s.val_users_cold)

    # ------------------------------------------------------------------ loaders
    @property
    def train_tensors(self) -> dict[str, torch.Tensor]:
        """The training view's columns, built on first use: a loaded run (:func:`recarena.inference.load_run`)
        that only scores never pays for a view it does not need (mined triplets take ~40 s at 25M ratings)."""
        if self._train_tensors is None:
            self._train_tensors = self.build_view(self)
        return self._train_tensors

    @property
    def n_train(self) -> int:
        """Training examples per epoch (rows of the view)."""
        return len(next(iter(self.train_tensors.values())))

    def train_dataloader(self) -> ShuffledBatches:
        where = self.residency()
        device = self.trainer.strategy.root_device if where == "device" else None
        return self._batches(device=device, pinned=where == "pinned")

    def _batches(self, device: torch.device | None = None, pinned: bool = False) -> ShuffledBatches:
        rank, world = self._rank_and_world()
        group = self.minibatches_per_step if world == 1 else 1
        return ShuffledBatches(
            self.train_tensors, self.batch_size, seed=self.seed, shuffle=self.shuffle, rank=rank, world_size=world,
            group=group, device=device, pinned=pinned,
        )

    def residency(self) -> str:
        """Where the training view lives (``data.device_resident``, :func:`recarena.data.views.residency`); says so
        when ``auto`` falls back to pinned host memory."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        option = self.data_cfg.get("device_resident", "auto")
        view_bytes = sum(t.numel() * t.element_size() for t in self.train_tensors.values())
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        where = residency(option, device, view_bytes, free)
        if where == "pinned" and option == "auto":
            log.warning("data.device_resident=auto: the training view (%.2f GB) takes more than half of %s's free "
                        "memory (%.2f GB), so it stays in pinned host memory (a non-blocking copy per batch)",
                        view_bytes / 1e9, device, free / 1e9)  # fmt: skip
        return where

    def optimizer_steps(self, epochs: int) -> int:
        """Optimiser steps in ``epochs`` epochs: the length of an LR schedule."""
        return self._batches().minibatches_per_epoch * max(epochs, 1)  # counting only: the view stays where it is

    def _eval_loader(self, data: EvalData) -> DataLoader:
        # batch_size=None: each dataset item is already a whole user chunk (a dict of tensors). Under DDP each
        # process scores its own users (Lightning's sampler would pad ranks with repeated chunks and count some
        # users twice; trainer=ddp sets use_distributed_sampler=false).
        rank, world = self._rank_and_world()
        chunks = data.batches(self.user_chunk, rank=rank, world_size=world, device=self._eval_device(data))
        return DataLoader(chunks, batch_size=None, shuffle=False)

    def _eval_device(self, data: EvalData) -> torch.device | None:
        """Where evaluation chunks are cut: on the accelerator when ``data.device_resident`` would put pairs of
        their size there (:func:`recarena.data.views.residency`), so no chunk is copied; else on the host. ``true``
        is read as ``auto`` here: it promises the training view a place on the device, and evaluation columns that
        do not fit beside it fall back to the host instead of stopping the run."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type == "cpu":
            return None
        option = self.data_cfg.get("device_resident", "auto")
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        where = residency("auto" if option in (True, "true") else option, device, data.pair_bytes, free)
        return device if where == "device" else None

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_data)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_data)
