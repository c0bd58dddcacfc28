"""Data: readers for interaction logs, the split protocols, the prepared Dataset, synthetic data."""

from .dataset import Dataset, Ragged, Split, pad_histories

__all__ = ["Dataset", "Ragged", "Split", "pad_histories"]
