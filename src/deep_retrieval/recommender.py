"""The one recommender contract every model and baseline honours.

    rec = SomeRecommender(...).fit(dataset)          # -> self
    ids, scores = rec.recommend(histories, k)        # (n, k) int64, (n, k) float32
    rec.save(dir); rec2 = SomeRecommender.load(dir)  # identical recommendations

``histories`` is a ``Ragged`` or any sequence of item-index sequences (time-ordered,
dense item indices). Rows with fewer than k recommendable items are padded with
id -1 and score -inf. With ``exclude_history=True`` a user's history items are
never recommended. After each call ``last_items_scored`` holds, per user, how many
items the recommender scored (V for brute force, the candidate count for DR).

Optional: ``score_items(histories, items)`` scores a candidate subset per user (``items``
a ``Ragged`` with one row per history) and returns a ``Ragged`` of float32 scores with the
same rows, the values ``recommend`` would rank; recommenders without it raise ``DRError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

import numpy as np
import torch

from .data.dataset import Dataset, Ragged, unique_sorted
from .errors import DRError


class Recommender(ABC):
    name: ClassVar[str] = "recommender"
    last_items_scored: np.ndarray | None = None

    @abstractmethod
    def fit(self, dataset: Dataset) -> Self: ...

    @abstractmethod
    def recommend(
        self, histories, k: int, exclude_history: bool = False
    ) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def save(self, path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path) -> Self: ...

    def score_items(self, histories, items: Ragged) -> Ragged:
        """Scores (float32, same rows as ``items``) of the candidate ``items[u]`` for user u."""
        raise DRError(f"{self.name} cannot score a candidate subset")


def pairs_in_history(rows: np.ndarray, items: np.ndarray, hist: Ragged) -> np.ndarray:
    """(m,) True where ``items[j]`` is in the history row ``rows[j]`` (items may be -1)."""
    base = int(max(items.max(initial=-1), hist.values.max(initial=-1))) + 1
    hkeys = unique_sorted(hist.row_ids() * base + hist.values)  # (|pairs|,) sorted
    if len(hkeys) == 0:
        return np.zeros(items.shape, dtype=bool)
    keys = rows * base + np.maximum(items, 0)
    pos = np.minimum(np.searchsorted(hkeys, keys), len(hkeys) - 1)
    return (hkeys[pos] == keys) & (items >= 0)


def mask_history_(scores: torch.Tensor, hist: Ragged) -> torch.Tensor:
    """Set ``scores[u, item] = -inf`` for every item in user u's history, in place."""
    if len(hist.values):
        rows = torch.from_numpy(hist.row_ids())
        cols = torch.from_numpy(hist.values)
        scores[rows, cols] = float("-inf")
    return scores


def topk_padded(scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``scores`` (n, V); ids -1 and score -inf where fewer than k are finite."""
    n, V = scores.shape
    kk = min(k, V)
    vals, idx = torch.topk(scores, kk, dim=1)  # (n, kk)
    ids = np.full((n, k), -1, dtype=np.int64)
    out = np.full((n, k), -np.inf, dtype=np.float32)
    v = vals.float().numpy()
    i = idx.numpy()
    finite = np.isfinite(v)
    ids[:, :kk] = np.where(finite, i, -1)
    out[:, :kk] = np.where(finite, v, -np.inf)
    return ids, out
