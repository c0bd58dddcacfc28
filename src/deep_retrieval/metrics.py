"""Top-M retrieval metrics per user, averaged over users without weights (TDM / JTM / DR).

For a user with retrieved list P (the first M ids of its row, -1 = nothing) and ground
truth set G (duplicates in either count once):

    precision@M = |P ∩ G| / M          (M, not the number of ids returned)
    recall@M    = |P ∩ G| / |G|
    F@M         = 2 P R / (P + R)      (0 when P + R = 0)
    NDCG@M      = DCG / IDCG, DCG = sum over hit positions j (0-based) of 1 / log2(j + 2),
                  IDCG over min(|G|, M) hits (never over the hits found in the top M)
    hit@M       = 1 if |P ∩ G| > 0

Users whose ground truth is empty are skipped (their per-user values are NaN) and counted.
Everything is vectorised: (user, item) pairs are encoded as int64 keys and looked up in
the sorted ground-truth keys with ``searchsorted``.
"""

from __future__ import annotations

import numpy as np

from .data.dataset import as_ragged, unique_sorted
from .errors import DRError

METRICS = ("precision", "recall", "f1", "ndcg", "hit")


def _first_occurrence(recs: np.ndarray) -> np.ndarray:
    """(n, M) True where the id is valid (>= 0) and does not appear earlier in its row."""
    n, m = recs.shape
    order = np.argsort(recs, axis=1, kind="stable")  # (n, M) equal ids stay in position order
    srt = np.take_along_axis(recs, order, axis=1)
    first_sorted = np.ones((n, m), dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    first = np.empty((n, m), dtype=bool)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first & (recs >= 0)


def per_user(recs: np.ndarray, truth, M: int) -> dict[str, np.ndarray]:
    """Per-user metrics at cut-off ``M`` for ``recs`` (n, >=0) int64 padded -1 and ``truth``.

    Returns (n,) float64 arrays for every name in ``METRICS`` (NaN for users with empty
    truth), plus ``hits`` and ``n_truth`` (n,) int64 and ``valid`` (n,) bool.
    """
    truth = as_ragged(truth)
    recs = np.asarray(recs, dtype=np.int64)
    if recs.ndim != 2:
        raise DRError(f"recommendations must be a 2-d array (users, M), got shape {recs.shape}")
    n = recs.shape[0]
    if len(truth) != n:
        raise DRError(f"{n} rows of recommendations but {len(truth)} ground-truth rows")
    if M < 1:
        raise DRError(f"cut-off M must be >= 1, got {M}")
    top = recs[:, :M]  # (n, m) with m = min(M, columns)
    m = top.shape[1]

    # ground truth as a set of (user, item) keys
    base = int(max(top.max(initial=-1), truth.values.max(initial=-1))) + 1
    tkeys = unique_sorted(truth.row_ids() * base + truth.values)  # (|unique pairs|,) sorted
    n_truth = np.bincount(tkeys // base, minlength=n).astype(np.int64)  # (n,) |G|

    # hits: first occurrence of a valid id whose key is in the truth
    first = _first_occurrence(top)  # (n, m)
    rkeys = np.arange(n, dtype=np.int64)[:, None] * base + np.maximum(top, 0)  # (n, m)
    pos = np.minimum(np.searchsorted(tkeys, rkeys), max(len(tkeys) - 1, 0))
    hit = first & (tkeys[pos] == rkeys) if len(tkeys) else np.zeros((n, m), dtype=bool)
    hits = hit.sum(axis=1).astype(np.int64)  # (n,)

    valid = n_truth > 0
    g = np.maximum(n_truth, 1).astype(np.float64)
    precision = hits / M
    recall = hits / g
    pr = precision + recall
    f1 = np.divide(2 * precision * recall, pr, out=np.zeros(n), where=pr > 0)
    disc = 1.0 / np.log2(np.arange(M, dtype=np.float64) + 2)  # (M,)
    dcg = hit @ disc[:m]  # (n,)
    idcg = np.cumsum(disc)[np.minimum(np.maximum(n_truth, 1), M) - 1]  # (n,)
    out = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ndcg": dcg / idcg,
        "hit": (hits > 0).astype(np.float64),
    }
    for name in METRICS:
        out[name] = np.where(valid, out[name], np.nan)
    out.update(hits=hits, n_truth=n_truth, valid=valid)
    return out


def compute(recs: np.ndarray, truth, ks: list[int]) -> dict[int, dict[str, float]]:
    """Metrics averaged over users with non-empty truth, for each cut-off in ``ks``.

    Returns ``{k: {"precision", "recall", "f1", "ndcg", "hit": float,
    "n_users": users averaged, "n_skipped": users with empty truth}}``.
    """
    if not ks:
        raise DRError("no cut-off given: pass at least one k")
    truth = as_ragged(truth)
    out: dict[int, dict[str, float]] = {}
    for k in ks:
        pu = per_user(recs, truth, int(k))
        valid = pu["valid"]
        n_valid = int(valid.sum())
        res = {m: float(pu[m][valid].mean()) if n_valid else float("nan") for m in METRICS}
        res["n_users"] = n_valid
        res["n_skipped"] = int(len(valid) - n_valid)
        out[int(k)] = res
    return out


__all__ = ["METRICS", "compute", "per_user"]
