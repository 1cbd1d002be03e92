"""The data pipeline: ``sources.load_corpus(cfg)`` (registry, download, cache) -> ``movielens`` parsers (or the
``synthetic`` generator) -> :class:`Corpus`. Only the Corpus types are re-exported, so importing a sibling
module (e.g. the registry alone) stays light."""

from recarena.data.corpus import Corpus, RatingScale, build_corpus
from recarena.errors import DataError

__all__ = ["Corpus", "DataError", "RatingScale", "build_corpus"]
