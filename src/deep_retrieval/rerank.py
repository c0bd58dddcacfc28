"""Pluggable final scoring: DR's candidates reranked by another recommender.

    DR beam search (B paths) -> candidates = the items on those paths
                             -> scorer.score_items(histories, candidates) -> top-k

Any recommender with ``score_items`` (Item-CF, RP3beta, EASE, ALS, brute force over some
embeddings) can be the scorer; DR's own jointly trained reranker stays the default of
``DeepRetrieval.recommend``. This is how the paper's production system uses DR: as the
retrieval stage, with another model ranking what it retrieved. When B covers every path,
every item is a candidate and ``Reranked`` equals the scorer over all items.
"""

from __future__ import annotations

from typing import Self

import numpy as np

from .data.dataset import Dataset, Ragged, as_ragged, pad_ragged
from .errors import DRError
from .model import DeepRetrieval
from .recommender import Recommender, pairs_in_history


class Reranked(Recommender):
    """``dr``'s candidates ordered by ``scorer`` (both fitted); ``B`` = the beam (the model's)."""

    name = "dr-rerank"

    def __init__(self, dr: DeepRetrieval, scorer: Recommender, B: int | None = None):
        self.dr, self.scorer, self.B = dr, scorer, B

    def fit(self, dataset: Dataset) -> Self:
        """Fit both parts (each may also come fitted: then call nothing)."""
        self.dr.fit(dataset)
        self.scorer.fit(dataset)
        return self

    def recommend(self, histories, k: int, exclude_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise DRError(f"k must be >= 1, got {k}")
        hist = as_ragged(histories)
        cands = self.dr.candidates(hist, self.B)  # one row of item ids per user
        if exclude_history:
            keep = ~pairs_in_history(cands.row_ids(), cands.values, hist)
            cands = Ragged.from_lengths(cands.values[keep], np.bincount(cands.row_ids()[keep],
                                                                         minlength=len(hist)))
        scores = self.scorer.score_items(hist, cands)  # same rows as cands
        width = int(cands.lengths.max(initial=0))
        ids, _ = pad_ragged(cands, width)  # (n, m) padded -1, most recent = all (width = longest)
        s = np.full(ids.shape, -np.inf, dtype=np.float32)
        s[ids >= 0] = scores.values
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (n, min(m, k))
        top_s = np.take_along_axis(s, order, 1)
        top_i = np.where(np.isfinite(top_s), np.take_along_axis(ids, order, 1), -1)
        out_i = np.full((len(hist), k), -1, dtype=np.int64)
        out_s = np.full((len(hist), k), -np.inf, dtype=np.float32)
        out_i[:, : order.shape[1]], out_s[:, : order.shape[1]] = top_i, np.where(top_i >= 0, top_s, -np.inf)
        self.last_items_scored = cands.lengths.copy()
        return out_i, out_s

    def save(self, path) -> None:
        raise DRError("save the DR model and the scorer separately; Reranked only combines them")

    @classmethod
    def load(cls, path) -> Self:
        raise DRError("load the DR model and the scorer separately; Reranked only combines them")
