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

from typing import TYPE_CHECKING, Self

import numpy as np

from .baselines import _select_top
from .blend import Blend, LogMean, history_mean, weighted_sum
from .data.dataset import Dataset, Ragged, as_ragged, pad_ragged
from .errors import DRError, InvalidInputError
from .metrics import compute
from .recommender import Recommender, pairs_in_history

if TYPE_CHECKING:  # model.py imports this module
    from .model import DeepRetrieval


def _candidates(dr: DeepRetrieval, hist: Ragged, B: int | None, exclude_history: bool) -> Ragged:
    """The items on each user's B best paths (a row per history), the user's own items left out
    when ``exclude_history``."""
    cands = dr.candidates(hist, B)
    if not exclude_history:
        return cands
    keep = ~pairs_in_history(cands.row_ids(), cands.values, hist)
    return Ragged.from_lengths(cands.values[keep], np.bincount(cands.row_ids()[keep], minlength=len(hist)))


def _top(cands: Ragged, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of ``cands`` by ``values`` (nnz,): ids and scores (n, k), padded
    -1 / -inf; ties keep the candidates' order."""
    ids, _ = pad_ragged(cands, int(cands.lengths.max(initial=0)))  # (n, m) padded -1, in order
    s = np.zeros(ids.shape, dtype=np.float32)
    s[ids >= 0] = values
    return _select_top(ids, s, ids >= 0, k)


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
        cands = _candidates(self.dr, hist, self.B, exclude_history)
        out_i, out_s = _top(cands, self.scorer.score_items(hist, cands).values, k)
        self.last_items_scored = cands.lengths.copy()
        return out_i, out_s

    def save(self, path) -> None:
        raise DRError("save the DR model and the scorer separately; Reranked only combines them")

    @classmethod
    def load(cls, path) -> Self:
        raise DRError("load the DR model and the scorer separately; Reranked only combines them")


def pick_blend(
    dr: DeepRetrieval, scorer: Recommender, dataset: Dataset, weights, eps=(0.01,), k: int = 10,
    exclude_history: bool = False, batch_size: int = 256,
) -> tuple[Blend, list[dict]]:
    """``Blend([dr's reranker, LogMean(scorer, eps)], [1, w])`` with the (w, eps) whose
    ``Reranked(dr, blend)`` (at the model's B) has the best recall@k on the validation users
    (the first of equals); ``scorer`` comes fitted. Returns the blend and one row per (w, eps)
    tried: ``{"w", "eps", "recall", "ndcg"}``. Test users are never read.

    Each row is what ``evaluate(dataset, {"b": Reranked(dr, blend(w, eps))}, [k], split="val")``
    gives, computed once: the candidates, the reranker's scores and ``scorer``'s history means of
    every validation user (in ``evaluate``'s batches), then for each (w, eps) the blend's sum
    (``weighted_sum``, as ``Blend.score_items``) and ``Reranked``'s top k (``_top``).
    """
    weights, eps = [float(w) for w in weights], [float(e) for e in eps]
    if not weights or not eps:
        raise InvalidInputError("pick_blend needs at least one weight and one eps")
    reranker = dr.as_recommenders()["brute-force"]

    def blend(w: float, e: float) -> Blend:
        return Blend([reranker, LogMean(scorer, e, dataset.n_items)], [1.0, w], dataset.n_items)

    s = dataset.split("val")
    users = np.flatnonzero(s.truth.lengths > 0)
    if len(users) == 0:
        raise DRError("split 'val' has no user with ground truth")
    hist, truth = s.hist.take(users), s.truth.take(users)
    parts = []  # per batch: the candidates, the reranker's scores, the scorer's history means
    for lo in range(0, len(users), batch_size):
        h = hist.take(np.arange(lo, min(len(users), lo + batch_size)))
        cands = _candidates(dr, h, None, exclude_history)
        parts.append((cands, reranker.score_items(h, cands).values,
                       history_mean(scorer.score_items(h, cands).values, h, cands)))
    rows = []
    for e in eps:
        logs = [np.log(mean + e).astype(np.float32) for _, _, mean in parts]  # LogMean's values
        for w in weights:
            recs = [_top(cands, weighted_sum(len(rr), [rr, lm], [1.0, w]), k)[0]
                    for (cands, rr, _), lm in zip(parts, logs, strict=True)]
            m = compute(np.concatenate(recs), truth, [k])[k]
            rows.append({"w": w, "eps": e, "recall": m["recall"], "ndcg": m["ndcg"]})
    best = max(rows, key=lambda r: r["recall"])
    return blend(best["w"], best["eps"]), rows
