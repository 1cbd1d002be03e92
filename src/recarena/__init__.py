"""recarena: train and compare recommender model families on MovieLens, fairly, on one data pipeline."""

__version__ = "0.1.0"
