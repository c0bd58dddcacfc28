"""Blended final scoring: several recommenders' scores summed with weights (issue 11).

    score(u, i) = sum_c  w_c * s_c(u, i)

``LogMean`` turns an item-item model's score (a sum over the user's history items, e.g.
RP3beta, Item-CF, EASE) into a log-probability-like one, ``log(max(s, 0) / |h| + eps)``,
with |h| the user's distinct history items, so that it adds to a softmax model's logits (a
product of experts). Both need only the parts' ``score_items`` and depend on nothing but the
user and the item, so a ``Blend`` can rank DR's candidates (``Reranked(dr, blend)``) and,
with every item a candidate, gives what it gives over all items:

    dr_scores = dr.as_recommenders()["brute-force"]      # DR's reranker as a scorer
    blend = Blend([dr_scores, LogMean(RP3beta(...))], [1.0, w]).fit(dataset)
    ids, scores = Reranked(dr, blend).recommend(histories, k)

Pick the weights on validation users: ``rerank.pick_blend`` (used by ``dr evaluate --rerank
BASELINE --blend W,...`` and ``benchmarks/bench_rerank.py --blend``).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import torch

from .baselines import _check_candidates, _check_request
from .data.dataset import Dataset, Ragged, as_ragged, unique_sorted
from .errors import DRError
from .recommender import Recommender, mask_history_, topk_padded


def distinct_lengths(hist: Ragged) -> np.ndarray:
    """(n,) the number of distinct items in each history row."""
    base = int(hist.values.max(initial=-1)) + 1
    keys = unique_sorted(hist.row_ids() * base + hist.values)  # one key per distinct (row, item)
    return np.bincount(keys // max(base, 1), minlength=len(hist)).astype(np.int64)


def history_mean(values: np.ndarray, hist: Ragged, items: Ragged) -> np.ndarray:
    """(nnz,) float64 ``max(s, 0) / |h|`` of a scorer's ``values`` for ``items`` (rows of
    ``hist``), |h| the row's distinct history items (at least 1): what ``LogMean`` takes the
    log of."""
    return np.maximum(values, 0) / np.maximum(distinct_lengths(hist), 1)[items.row_ids()]


def weighted_sum(n: int, values: list, weights: list[float]) -> np.ndarray:
    """(n,) float32 ``sum_c weights[c] * values[c]``, the parts in order, zero weights skipped
    (their ``values`` may be None): the blend's score (``Blend.score_items``)."""
    out = np.zeros(n, dtype=np.float32)
    for v, w in zip(values, weights, strict=True):
        if w != 0:
            out += np.float32(w) * v
    return out


class _Scorer(Recommender):
    """``recommend`` over all items by ``score_items``; ``n_items`` comes from ``fit``."""

    n_items: int | None = None
    batch_size = 256

    def recommend(self, histories, k: int, exclude_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if self.n_items is None:
            raise DRError(f"{self.name} recommender is not fitted")
        hist = as_ragged(histories)
        n, V = len(hist), self.n_items
        _check_request(hist, V, k)
        ids, scores = [np.zeros((0, k), dtype=np.int64)], [np.zeros((0, k), dtype=np.float32)]
        step = max(1, min(self.batch_size, (1 << 24) // max(V, 1)))  # at most ~16M (user, item) pairs
        for lo in range(0, n, step):
            h = hist.take(np.arange(lo, min(n, lo + step)))
            every = Ragged(np.tile(np.arange(V, dtype=np.int64), len(h)),
                           np.arange(len(h) + 1, dtype=np.int64) * V)  # every item, each row
            s = torch.from_numpy(self.score_items(h, every).values.reshape(len(h), V))  # (b, V)
            if exclude_history:
                mask_history_(s, h)
            i, v = topk_padded(s, k)
            ids.append(i)
            scores.append(v)
        self.last_items_scored = np.full(n, V, dtype=np.int64)
        return np.concatenate(ids), np.concatenate(scores)

    def save(self, path) -> None:
        raise DRError(f"{self.name} only combines other recommenders: save each part separately")

    @classmethod
    def load(cls, path) -> Self:
        raise DRError(f"{cls.name} only combines other recommenders: load each part separately")


class LogMean(_Scorer):
    """``log(max(s, 0) / |h| + eps)`` of ``scorer``'s score s, |h| the distinct history items."""

    name = "log-mean"

    def __init__(self, scorer: Recommender, eps: float = 0.01, n_items: int | None = None):
        if not eps > 0:
            raise DRError(f"log-mean needs eps > 0, got {eps}")
        self.scorer, self.eps, self.n_items = scorer, float(eps), n_items

    def fit(self, dataset: Dataset) -> Self:
        self.scorer.fit(dataset)
        self.n_items = dataset.n_items
        return self

    def score_items(self, histories, items) -> Ragged:
        hist, items = as_ragged(histories), as_ragged(items)
        mean = history_mean(self.scorer.score_items(hist, items).values, hist, items)
        out = np.log(mean + self.eps).astype(np.float32)
        self.last_items_scored = items.lengths.copy()
        return Ragged(out, items.offsets.copy())


class Blend(_Scorer):
    """``sum_c weights[c] * parts[c].score_items(...)``: fit fits every part."""

    name = "blend"

    def __init__(self, parts: list[Recommender], weights: list[float], n_items: int | None = None):
        if not parts or len(parts) != len(weights):
            raise DRError(f"blend needs one weight per part: {len(parts)} parts, {len(weights)} weights")
        if not all(np.isfinite(w) for w in weights):
            raise DRError(f"blend weights must be finite numbers, got {weights}")
        self.parts, self.weights, self.n_items = list(parts), [float(w) for w in weights], n_items

    def fit(self, dataset: Dataset) -> Self:
        for p in self.parts:
            p.fit(dataset)
        self.n_items = dataset.n_items
        return self

    def score_items(self, histories, items) -> Ragged:
        hist, items = as_ragged(histories), as_ragged(items)
        if self.n_items is not None:
            _check_candidates(hist, items, self.n_items)
        out = np.zeros(len(items.values), dtype=np.float32)
        for p, w in zip(self.parts, self.weights, strict=True):
            if w != 0:
                out += np.float32(w) * p.score_items(hist, items).values
        self.last_items_scored = items.lengths.copy()
        return Ragged(out, items.offsets.copy())
