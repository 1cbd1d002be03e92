"""What item side information a model may see under a split: nothing a held-out rating's time has not reached.

User tags are applications by users at times (``corpus.tags``: ``item``, ``user_id``, ``tag``, ``timestamp``), and
the models read them as per-item counts (the two-tower's ``tags`` input, the siamese descriptors). Counting every
application would hand a model the tags that test users applied to their held-out items, at or after rating them.
:func:`visible_tags` counts only the applications a split leaves in the past:

- ``time_cutoff`` (one global time): those before the first held-out rating's time, by every user;
- every other split (per user): a user's applications before that user's first held-out rating; the applications
  of users without held-out ratings (or without ratings) all count.

The tag genome (``corpus.genome``) has no times: GroupLens computed it from all ratings and tags, the held-out ones
included. Under a split that holds out the future (:data:`TIME_SPLITS`) a model reads it only with
``model.allow_future_item_features=true`` (:func:`check_genome`), and its runs are marked in the leaderboard.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recarena.data.corpus import Corpus
from recarena.data.splits import Split
from recarena.errors import ConfigError

#: Splits whose held-out ratings are later in time than the training ones.
TIME_SPLITS = ("temporal", "time_cutoff", "leave_one_out")
_NEVER = np.iinfo(np.int64).max


def visible_tags(corpus: Corpus, split: Split | None) -> pd.DataFrame | None:
    """``item``, ``tag``, ``count``: the tag applications ``split`` leaves before each user's held-out ratings (all
    of them when ``split`` is None: no ratings are held out), counted per (item, tag); None without tags."""
    apps = corpus.tags
    if apps is None or not len(apps):
        return None
    if split is not None:
        apps = apps[apps["timestamp"].to_numpy() < _visible_until(corpus, split, apps["user_id"].to_numpy())]
    counts = apps.groupby(["item", "tag"], sort=True).size().rename("count").reset_index()
    return counts.astype({"item": "int32", "count": "int32"})


def _visible_until(corpus: Corpus, split: Split, tagger_ids: np.ndarray) -> np.ndarray | int:
    """The time each application must precede: the split's first held-out time (time_cutoff), else per user."""
    held = np.concatenate([split.val, split.test])
    if not len(held):
        return _NEVER
    if split.name == "time_cutoff":
        return int(corpus.timestamps[held].min())
    first = np.full(corpus.n_users, _NEVER, dtype=np.int64)
    np.minimum.at(first, corpus.users[held], corpus.timestamps[held])
    position = np.searchsorted(corpus.user_ids, tagger_ids)  # user_ids is sorted (corpus.build_corpus)
    known = position < len(corpus.user_ids)
    known[known] = corpus.user_ids[position[known]] == tagger_ids[known]
    return np.where(known, first[np.minimum(position, len(first) - 1)], _NEVER)


def check_genome(corpus: Corpus, split: Split | None, genome_k: int, allowed: bool) -> None:
    """Refuse the tag genome under a time split unless ``model.allow_future_item_features=true``."""
    if corpus.genome is None or not len(corpus.genome) or genome_k == 0 or allowed:
        return
    if split is not None and split.name in TIME_SPLITS:
        raise ConfigError(
            f"model.genome_k={genome_k} reads {corpus.name}'s tag genome, which GroupLens computed from all ratings "
            f"and tags, the ones split={split.name} holds out included: set model.genome_k=0, or "
            "model.allow_future_item_features=true to use it anyway (the leaderboard marks such runs)"
        )


def uses_future_item_features(corpus: Corpus, split: Split | None, genome_k: int) -> bool:
    """Whether a run reads the genome under a time split (allowed by ``model.allow_future_item_features``)."""
    has_genome = corpus.genome is not None and len(corpus.genome) > 0
    return bool(has_genome and genome_k and split is not None and split.name in TIME_SPLITS)
