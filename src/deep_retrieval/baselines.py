"""Baselines behind the one recommender contract.

Popularity; the item-item models Item-CF (cosine), RP3beta and EASE; ALS from ``implicit``
(the ``als`` extra); brute force and HNSW over given item embeddings.

Every class here honours ``Recommender`` (see ``recommender.py``): ``recommend`` returns
``(n, k)`` int64 ids padded with -1 and ``(n, k)`` float32 scores padded with -inf, sorted
by score; with ``exclude_history=True`` no history item is ever returned. Each saves to a
directory (written atomically) holding ``recommender.json`` plus arrays without pickles.
Item-CF, RP3beta, EASE, ALS and brute force also score a candidate subset (``score_items``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch
from numba import njit
from safetensors.numpy import load_file, save_file
from scipy.linalg import get_lapack_funcs

from .artifacts import atomic_dir, atomic_write_json, read_json, read_npz
from .data.dataset import Dataset, Ragged, as_ragged
from .errors import DRError
from .recommender import Recommender, mask_history_, pairs_in_history, topk_padded

META = "recommender.json"
FAISS_MISSING = "hnsw needs the `ann` extra: pip install 'deep-retrieval[ann]'"
IMPLICIT_MISSING = "als needs the `als` extra (the implicit library): pip install 'deep-retrieval[als]'"


# ------------------------------------------------------------------ helpers
def _check_request(hist: Ragged, n_items: int, k: int) -> None:
    if k < 1:
        raise DRError(f"k must be >= 1, got {k}")
    v = hist.values
    if len(v) and (v.min() < 0 or v.max() >= n_items):
        raise DRError(f"history holds item indices outside [0, {n_items})")


def _empty(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)


def _in_history(ids: np.ndarray, hist: Ragged) -> np.ndarray:
    """(n, W) True where ``ids[u, j]`` is an item of user u's history (ids may be -1)."""
    rows = np.broadcast_to(np.arange(ids.shape[0], dtype=np.int64)[:, None], ids.shape)
    return pairs_in_history(rows, ids, hist)


def _select_top(
    ids: np.ndarray, scores: np.ndarray, keep: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best kept candidates of each row, best first; pads with -1 / -inf.

    ``ids``/``scores``/``keep`` are (n, W); ties keep the candidates' column order.
    """
    n, w = ids.shape
    s = np.where(keep, scores, -np.inf).astype(np.float32)  # (n, W)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (n, min(W, k))
    top_s = np.take_along_axis(s, order, axis=1)
    top_i = np.take_along_axis(ids, order, axis=1)
    out_i = np.full((n, k), -1, dtype=np.int64)
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    finite = np.isfinite(top_s)
    out_i[:, : order.shape[1]] = np.where(finite, top_i, -1)
    out_s[:, : order.shape[1]] = np.where(finite, top_s, -np.inf)
    return out_i, out_s


def _topk_row(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one score vector (V,) with numpy: ``(1, k)`` ids and scores, padded."""
    V = len(s)
    kk = min(k, V)
    cand = np.argpartition(-s, kk - 1)[:kk] if 0 < kk < V else np.arange(V)  # (kk,)
    cand = cand[np.argsort(-s[cand], kind="stable")]
    return _select_top(cand[None, :], s[cand][None, :], np.ones((1, len(cand)), bool), k)


def _rank_in_rows(rows: np.ndarray, vals: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort entries by row, then by decreasing value; return ``(order, rank within row)``.

    ``rows`` (m,) int64 in [0, n_rows); ``vals`` (m,) positive float32, whose bit patterns
    order like the values, so one stable int64 sort is exact. Ties keep their input order.
    """
    bits = vals.astype(np.float32, copy=False).view(np.int32)  # (m,)
    key = (rows << 31) | (0x7FFFFFFF - bits).astype(np.int64)  # (m,)
    order = np.argsort(key, kind="stable")
    starts = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=starts[1:])
    rank = np.arange(len(rows), dtype=np.int64) - starts[rows[order]]
    return order, rank


def _binary_matrix(rows: Ragged, n_items: int) -> sp.csr_matrix:
    """(len(rows), n_items) float32 CSR with a 1 for every distinct (row, item) pair."""
    X = sp.csr_matrix(
        (np.ones(len(rows.values), dtype=np.float32), (rows.row_ids(), rows.values)),
        shape=(len(rows), n_items),
    )  # duplicates are summed on conversion ...
    X.data[:] = 1.0  # ... and set back to one: history as a set
    return X


def _read_meta(path, name: str) -> dict:
    meta = read_json(Path(path) / META, "recommender metadata")
    if meta.get("name") != name:
        raise DRError(f"{path} holds a {meta.get('name')!r} recommender, not {name!r}")
    return meta


def _load_npz(file: Path) -> dict[str, np.ndarray]:
    return read_npz(file, f"saved baseline {file.parent}")


def _check_candidates(hist: Ragged, items: Ragged, n_items: int) -> None:
    if len(items) != len(hist):
        raise DRError(f"{len(items)} candidate rows for {len(hist)} histories: give one row per user")
    v = items.values
    if len(v) and (v.min() < 0 or v.max() >= n_items):
        raise DRError(f"candidate items outside [0, {n_items})")


def _load_safetensors(file: Path, key: str) -> np.ndarray:
    if not file.is_file():
        raise DRError(f"{file} not found")
    try:
        return load_file(str(file))[key]
    except Exception as e:  # safetensors raises its own errors on a corrupt file
        raise DRError(f"{file} is corrupt ({e})") from None


def _import_implicit():
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise DRError(IMPLICIT_MISSING) from None
    return AlternatingLeastSquares, threadpool_limits


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise DRError(FAISS_MISSING) from None
    return faiss


# ------------------------------------------------------------------ popularity
class Popularity(Recommender):
    """Every user gets the most frequent training items (all items of ``dataset.train``).

    Scores are the counts; ties go to the lower item index.

    ``after = True``: an item's score is its count at positions >= h of the training rows
    (position 0 = a row's first item), h = the length of the user's history: what users took
    once they had taken as many items as this user has. An empty history gets the plain
    counts; ties go to the higher plain count, then the lower index. For time-ordered logs
    in which what people take shifts along their histories (e.g. MovieLens' sign-up ratings).
    """

    name = "popularity"

    def __init__(self, after: bool = False) -> None:
        self.after = bool(after)
        self.counts: np.ndarray | None = None  # (V,) int64
        self.order: np.ndarray | None = None  # (V,) items by decreasing count
        self.keys: np.ndarray | None = None  # after: (N,) sorted item * stride + position
        self.stride = 1  # after: 1 + the largest position in a training row

    def _set_counts(self, counts: np.ndarray, keys: np.ndarray | None = None, stride: int = 1) -> Self:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.order = np.argsort(-self.counts, kind="stable")
        if self.after:
            self.keys, self.stride = np.asarray(keys, dtype=np.int64), int(stride)
        return self

    def fit(self, dataset: Dataset) -> Self:
        r = dataset.train
        counts = np.bincount(r.values, minlength=dataset.n_items)
        if not self.after:
            return self._set_counts(counts)
        pos = r.positions()  # (N,)
        stride = int(pos.max(initial=0)) + 1
        return self._set_counts(counts, np.sort(r.values.astype(np.int64) * stride + pos), stride)

    def _fitted(self) -> np.ndarray:
        if self.counts is None:
            raise DRError("popularity recommender is not fitted")
        return self.counts

    def _after_counts(self, items: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Occurrences of ``items[i]`` at positions >= ``h[i]`` of the training rows (same shapes)."""
        base = items.astype(np.int64) * self.stride
        lo = np.searchsorted(self.keys, base + np.minimum(h, self.stride))
        return np.searchsorted(self.keys, base + self.stride) - lo

    def _scores(self, items: np.ndarray, h: np.ndarray) -> np.ndarray:
        """What ``recommend`` ranks by: the counts, or with ``after`` the counts after h (h = 0:
        every position, the counts)."""
        return self._after_counts(items, h) if self.after else self._fitted()[items]

    def recommend(self, histories, k: int, exclude_history: bool = False):
        counts = self._fitted()
        hist = as_ragged(histories)
        n, V = len(hist), len(counts)
        _check_request(hist, V, k)
        self.last_items_scored = np.full(n, V, dtype=np.int64)  # the ranking covers all V
        if n == 0:
            return _empty(k)
        # at most |history| of the first k + |history| items are masked
        extra = int(hist.lengths.max(initial=0)) if exclude_history else 0
        w = min(V, k + extra)
        if self.after:  # one ranking per distinct history length
            ids = np.empty((n, w), dtype=np.int64)
            for h in np.unique(hist.lengths):
                s = self._scores(self.order, np.full(V, h))  # (V,) in plain-count order
                ids[hist.lengths == h] = self.order[np.argsort(-s, kind="stable")[:w]]
        else:
            ids = np.broadcast_to(self.order[:w], (n, w))  # (n, w)
        scores = self._scores(ids, np.broadcast_to(hist.lengths[:, None], ids.shape))
        keep = ~_in_history(ids, hist) if exclude_history else np.ones((n, w), bool)
        return _select_top(ids, scores.astype(np.float32), keep, k)

    def score_items(self, histories, items) -> Ragged:
        """The scores of ``items[u]`` that ``recommend`` ranks by (the counts: whatever the
        history; with ``after``: the counts after the history's length)."""
        counts = self._fitted()
        hist, items = as_ragged(histories), as_ragged(items)
        _check_request(hist, len(counts), 1)
        _check_candidates(hist, items, len(counts))
        self.last_items_scored = items.lengths.copy()
        h = np.repeat(hist.lengths, items.lengths)  # (total,) each candidate's user's length
        return Ragged(self._scores(items.values, h).astype(np.float32), items.offsets.copy())

    def save(self, path) -> None:
        counts = self._fitted()
        extra = {"keys": self.keys, "stride": np.array(self.stride)} if self.after else {}
        with atomic_dir(path, "baseline") as tmp:
            np.savez(tmp / "counts.npz", counts=counts, **extra)
            atomic_write_json(tmp / META, {"name": self.name, "n_items": len(counts), "after": self.after})

    @classmethod
    def load(cls, path) -> Self:
        meta = _read_meta(path, cls.name)
        a = _load_npz(Path(path) / "counts.npz")
        rec = cls(after=bool(meta.get("after", False)))
        if rec.after:
            return rec._set_counts(a["counts"], a["keys"], int(a["stride"]))
        return rec._set_counts(a["counts"])


# ------------------------------------------------------------------ item-item models
def _top_similarities(
    X: sp.csr_matrix,
    neighbours: int,
    weigh: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    user_weight: np.ndarray | None = None,
    block_work: int = 1 << 22,
) -> sp.csr_matrix:
    """Top-``neighbours`` of ``weigh(X^T diag(user_weight) X)`` per item row, as a (V, V) float32 CSR.

    ``X`` is the binary (users, V) matrix. For each block of item rows i, the co-occurrence
    ``C[i, j] = sum over users u of i and j of user_weight[u]`` (1 when no weight) is computed
    sparse, then ``weigh(C values, i, j)`` gives the similarities; the diagonal and values
    <= 0 are dropped and row i keeps its ``neighbours`` largest, compared as the float32
    values stored (ties: lower j first). Blocks hold about ``block_work`` product work (the
    sum of the lengths of their users' rows), so no dense V x V matrix is ever built.
    """
    X = sp.csr_matrix(X, dtype=np.float32)
    V = X.shape[1]
    XT = X.T.tocsr()  # (V, U)
    Xw = X if user_weight is None else sp.diags(user_weight.astype(np.float32)) @ X  # (U, V)
    Xw = sp.csr_matrix(Xw, dtype=np.float32)
    work = np.cumsum(XT @ np.diff(X.indptr).astype(np.float64))  # (V,) cumulative product work
    counts_out, cols_out, sims_out = [], [], []  # per block: kept per row, columns, values
    lo = 0
    while lo < V:
        done = work[lo - 1] if lo else 0.0
        hi = max(lo + 1, int(np.searchsorted(work, done + block_work, side="right")))
        C = (XT[lo:hi] @ Xw).tocsr()  # (hi - lo, V) weighted co-occurrence
        C.sort_indices()  # columns ascending within a row: ties below go to the lower item
        rows = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(C.indptr))  # local rows
        cols = C.indices.astype(np.int64)
        sim = weigh(C.data, lo + rows, cols).astype(np.float32)
        off = (lo + rows != cols) & (sim > 0)
        rows, cols, sim = rows[off], cols[off], sim[off]
        order, rank = _rank_in_rows(rows, sim, hi - lo)
        top = order[rank < neighbours]  # still grouped by row
        counts_out.append(np.bincount(rows[top], minlength=hi - lo))
        cols_out.append(cols[top].astype(np.int32))
        sims_out.append(sim[top])
        lo = hi
    indptr = np.zeros(V + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts_out) if counts_out else [], out=indptr[1:])
    cols = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int32)
    sims = np.concatenate(sims_out) if sims_out else np.zeros(0, np.float32)
    W = sp.csr_matrix((sims, cols, indptr), shape=(V, V))
    W.sort_indices()
    return W


def item_neighbours(
    X: sp.csr_matrix, neighbours: int, shrink: float = 0.0, block_work: int = 1 << 22
) -> sp.csr_matrix:
    """Top-``neighbours`` cosine neighbours of every item, as a (V, V) float32 CSR.

    ``X`` is the binary (users, V) matrix. ``sim[i, j] = |U_i ∩ U_j| / (sqrt(n_i n_j) +
    shrink)`` for i != j (n_i = users of item i); see ``_top_similarities`` for the top-N.
    """
    norm = np.sqrt(np.asarray(X.sum(axis=0), dtype=np.float64).ravel())  # (V,) sqrt(n_i)
    return _top_similarities(
        X, neighbours, lambda c, i, j: c / (norm[i] * norm[j] + shrink), block_work=block_work
    )


def rp3beta_neighbours(
    X: sp.csr_matrix,
    alpha: float,
    beta: float,
    neighbours: int,
    normalize: bool = False,
    block_work: int = 1 << 22,
) -> sp.csr_matrix:
    """RP3beta's item-item matrix (Paudel et al. 2016, as in Dacrema et al. 2019's code), (V, V) CSR.

    ``W[i, j] = sum over users u of i and j of P_iu^alpha P_uj^alpha / n_j^beta`` with the
    random-walk steps P_iu = 1 / n_i (item -> user) and P_uj = 1 / |I_u| (user -> item),
    n_i = users of item i: ``W[i, j] = n_i^-alpha n_j^-beta sum_u |I_u|^-alpha``. Zero
    diagonal, the top ``neighbours`` per row kept, then each row divided by its sum when
    ``normalize``.
    """
    n_item = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()  # (V,) users per item
    n_user = np.diff(sp.csr_matrix(X).indptr).astype(np.float64)  # (U,) items per user
    safe = np.maximum(n_item, 1.0)
    left, right = safe**-alpha, safe**-beta  # (V,) each

    W = _top_similarities(
        X,
        neighbours,
        lambda c, i, j: c * left[i] * right[j],
        user_weight=np.maximum(n_user, 1.0) ** -alpha,
        block_work=block_work,
    )
    if normalize:
        sums = np.asarray(W.sum(axis=1), dtype=np.float64).ravel()  # (V,)
        W = sp.csr_matrix(sp.diags(1.0 / np.maximum(sums, 1e-30)) @ W, dtype=np.float32)
        W.sort_indices()
    return W


@njit(cache=True, nogil=True)
def _item_item_scores(indptr, indices, data, h_values, h_offsets, c_values, c_offsets, out):
    """``out[j] = sum over the distinct items i of history u of sim[i, c]`` for each candidate
    c = ``c_values[j]`` of row u: what ``(binary history @ sim)[u, c]`` gives, summed in the
    same order (history items ascending, float32), without building the (rows, V) product.
    ``sim`` is (indptr, indices, data) of a CSR matrix; ``out`` (len(c_values),) float32."""
    acc = np.zeros(len(indptr) - 1, dtype=np.float32)  # (V,) one user's scores, kept zero between rows
    for u in range(len(h_offsets) - 1):
        hist = np.sort(h_values[h_offsets[u]:h_offsets[u + 1]])
        for t in range(len(hist)):
            i = hist[t]
            if t > 0 and i == hist[t - 1]:
                continue  # the history as a set
            for p in range(indptr[i], indptr[i + 1]):
                acc[indices[p]] += data[p]
        for j in range(c_offsets[u], c_offsets[u + 1]):
            out[j] = acc[c_values[j]]
        for t in range(len(hist)):  # clear only what this user touched
            i = hist[t]
            for p in range(indptr[i], indptr[i + 1]):
                acc[indices[p]] = 0.0


class _SparseItemItem(Recommender):
    """A user's score for item j is the sum of ``sim[i, j]`` over the distinct items i of
    its history, ``sim`` a sparse (V, V) matrix built by ``_similarities``.

    Only items with a positive score are recommended, so a row can be shorter than k
    (padded); ``last_items_scored`` is that candidate count. ``PARAMS`` name the
    constructor arguments saved in ``recommender.json``.
    """

    PARAMS: ClassVar[tuple[str, ...]] = ()
    batch_size = 1024

    def __init__(self) -> None:
        self.sim: sp.csr_matrix | None = None  # (V, V) top neighbours per row

    def _similarities(self, X: sp.csr_matrix) -> sp.csr_matrix:
        raise NotImplementedError

    def fit(self, dataset: Dataset) -> Self:
        X = _binary_matrix(dataset.train, dataset.n_items)  # (train users, V)
        self.sim = self._similarities(X)
        return self

    def _fitted(self) -> sp.csr_matrix:
        if self.sim is None:
            raise DRError(f"{self.name} recommender is not fitted")
        return self.sim

    def _scores(self, h: Ragged) -> sp.csr_matrix:
        """(b, V) CSR of the users' scores, sorted indices, explicit entries = candidates."""
        S = (_binary_matrix(h, self.sim.shape[0]) @ self.sim).tocsr()
        S.sort_indices()
        return S

    def recommend(self, histories, k: int, exclude_history: bool = False):
        self._fitted()
        hist = as_ragged(histories)
        n, V = len(hist), self.sim.shape[0]
        _check_request(hist, V, k)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        scored = np.zeros(n, dtype=np.int64)
        for lo in range(0, n, self.batch_size):
            h = hist.take(np.arange(lo, min(n, lo + self.batch_size)))
            S = self._scores(h)  # (b, V) candidate scores; ties below go to the lower item
            rows = np.repeat(np.arange(len(h), dtype=np.int64), np.diff(S.indptr))
            cols = S.indices.astype(np.int64)
            vals = S.data
            keep = vals > 0
            scored[lo : lo + len(h)] = np.bincount(rows[keep], minlength=len(h))
            if exclude_history:
                keep &= ~pairs_in_history(rows, cols, h)
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
            order, rank = _rank_in_rows(rows, vals, len(h))
            top = rank < k
            r, c = lo + rows[order[top]], rank[top]
            ids[r, c] = cols[order[top]]
            scores[r, c] = vals[order[top]]
        self.last_items_scored = scored
        return ids, scores

    def score_items(self, histories, items) -> Ragged:
        """The scores of ``items[u]`` for user u (0 for an item nobody in the history points to)."""
        self._fitted()
        hist, items = as_ragged(histories), as_ragged(items)
        V = self.sim.shape[0]
        _check_request(hist, V, 1)
        _check_candidates(hist, items, V)
        W = self.sim
        out = np.zeros(len(items.values), dtype=np.float32)
        _item_item_scores(W.indptr, W.indices, W.data.astype(np.float32, copy=False),
                          hist.values.astype(np.int64, copy=False), hist.offsets,
                          items.values.astype(np.int64, copy=False), items.offsets, out)
        self.last_items_scored = items.lengths.copy()
        return Ragged(out, items.offsets.copy())

    def save(self, path) -> None:
        W = self._fitted()
        with atomic_dir(path, "baseline") as tmp:
            np.savez(tmp / "neighbours.npz", indptr=W.indptr, indices=W.indices, data=W.data)
            meta = {"name": self.name, "n_items": W.shape[0], **{p: getattr(self, p) for p in self.PARAMS}}
            atomic_write_json(tmp / META, meta)

    @classmethod
    def load(cls, path) -> Self:
        meta = _read_meta(path, cls.name)
        a = _load_npz(Path(path) / "neighbours.npz")
        V = int(meta["n_items"])
        rec = cls(**{p: meta[p] for p in cls.PARAMS if p in meta})
        rec.sim = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(V, V))
        return rec


class ItemCF(_SparseItemItem):
    """Item-based collaborative filtering (the paper's Item-CF row): the top ``neighbours``
    cosine neighbours of each item, with ``shrink`` added to the denominator (see
    ``item_neighbours``); scores as in ``_SparseItemItem``.
    """

    name = "item-cf"
    PARAMS = ("neighbours", "shrink")

    def __init__(self, neighbours: int = 200, shrink: float = 0.0, batch_size: int = 1024):
        super().__init__()
        if neighbours < 1:
            raise DRError(f"item-cf needs neighbours >= 1, got {neighbours}")
        if shrink < 0:
            raise DRError(f"item-cf needs shrink >= 0, got {shrink}")
        self.neighbours = int(neighbours)
        self.shrink = float(shrink)
        self.batch_size = int(batch_size)

    def _similarities(self, X):
        return item_neighbours(X, self.neighbours, self.shrink)


class RP3beta(_SparseItemItem):
    """RP3beta (Paudel et al. 2016): a 3-step random walk item -> user -> item, each step's
    probability raised to ``alpha``, divided by the destination's popularity^``beta``;
    the top ``neighbours`` per item kept (rows summing to one when ``normalize``). See
    ``rp3beta_neighbours``; scores as in ``_SparseItemItem``.
    """

    name = "rp3beta"
    PARAMS = ("alpha", "beta", "neighbours", "normalize")

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.5,
        neighbours: int = 200,
        normalize: bool = False,
        batch_size: int = 1024,
    ):
        super().__init__()
        if neighbours < 1:
            raise DRError(f"rp3beta needs neighbours >= 1, got {neighbours}")
        if alpha <= 0:
            raise DRError(f"rp3beta needs alpha > 0, got {alpha}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.neighbours = int(neighbours)
        self.normalize = bool(normalize)
        self.batch_size = int(batch_size)

    def _similarities(self, X):
        return rp3beta_neighbours(X, self.alpha, self.beta, self.neighbours, self.normalize)


# ------------------------------------------------------------------ EASE
def ease_weights(X: sp.csr_matrix, l2: float, dtype=np.float32, block: int = 2048) -> np.ndarray:
    """EASE's dense (V, V) item-item matrix (Steck 2019): ``B = I - P diag(1 / diag(P))``,
    ``P = (X^T X + l2 I)^-1``, so ``B[i, j] = -P[i, j] / P[j, j]`` and ``diag(B) = 0``.

    One V x V array of ``dtype`` is allocated (V^2 x 4 bytes in float32: 2.5 GB at 25k
    items) and everything happens in it: the Gram matrix in row blocks, LAPACK's Cholesky
    (potrf) and inverse (potri) in place, the symmetrisation in blocks, the column scaling.
    """
    X = sp.csr_matrix(X, dtype=dtype)
    V = X.shape[1]
    XT = X.T.tocsr()  # (V, U)
    G = np.empty((V, V), dtype=dtype)
    for lo in range(0, V, block):
        G[lo : lo + block] = (XT[lo : lo + block] @ X).toarray()  # (block, V) co-occurrence
    G[np.diag_indices(V)] += l2
    A = G.T  # Fortran-ordered view of the symmetric G: LAPACK works in place
    potrf, potri = get_lapack_funcs(("potrf", "potri"), (A,))
    c, info = potrf(A, lower=True, overwrite_a=True, clean=False)
    if info != 0:
        raise DRError(f"ease: X^T X + l2 I is not positive definite (l2 = {l2}); use a larger l2")
    P, info = potri(c, lower=True, overwrite_c=True)  # lower triangle of the inverse
    if info != 0:
        raise DRError(f"ease: inverting X^T X + l2 I failed (l2 = {l2}); use a larger l2")
    for lo in range(0, V, block):  # copy the lower triangle onto the upper one
        hi = min(V, lo + block)
        D = P[lo:hi, lo:hi]
        D[:] = np.tril(D) + np.tril(D, -1).T
        P[lo:hi, hi:] = P[hi:, lo:hi].T
    B = P.T  # C-ordered (P is Fortran-ordered) and equal to P, now symmetric: no copy
    B /= -np.diag(B).copy()[None, :]  # column j divided by -P[j, j]
    B[np.diag_indices(V)] = 0.0
    return B


class EASE(Recommender):
    """EASE (Steck 2019): a dense item-item matrix ``B`` from one closed-form ridge regression
    (see ``ease_weights``); a user's score for item j is the sum of ``B[i, j]`` over the
    distinct items i of its history. Every item is scored (``last_items_scored`` = V).

    The inverse of a dense V x V matrix: memory V^2 x 4 bytes in float32 (the default;
    float64 doubles it and is only needed for exact comparisons), time O(V^3). ``fit``
    refuses catalogues above ``max_items``.
    """

    name = "ease"
    PARAMS = ("l2", "max_items", "dtype")

    def __init__(self, l2: float = 500.0, max_items: int = 30_000, dtype: str = "float32",
                 batch_size: int = 256):
        if l2 <= 0:
            raise DRError(f"ease needs l2 > 0, got {l2}")
        if dtype not in ("float32", "float64"):
            raise DRError(f"ease dtype must be float32 or float64, got {dtype!r}")
        self.l2, self.max_items, self.dtype = float(l2), int(max_items), dtype
        self.batch_size = int(batch_size)
        self.B: np.ndarray | None = None  # (V, V)

    def fit(self, dataset: Dataset) -> Self:
        V = dataset.n_items
        if V > self.max_items:
            raise DRError(
                f"ease inverts a dense {V} x {V} matrix ({V * V * 4 / 2**30:.1f} GB in float32), "
                f"above max_items {self.max_items}: raise max_items or leave ease out"
            )
        self.B = ease_weights(_binary_matrix(dataset.train, V), self.l2, np.dtype(self.dtype))
        return self

    def _fitted(self) -> np.ndarray:
        if self.B is None:
            raise DRError("ease recommender is not fitted")
        return self.B

    def _chunks(self, hist: Ragged):
        """(rows, (b, V) float32 scores) per chunk of at most ~128 MB of scores."""
        V = self.B.shape[0]
        chunk = max(1, min(self.batch_size, (1 << 25) // max(V, 1)))
        for lo in range(0, len(hist), chunk):
            rows = np.arange(lo, min(len(hist), lo + chunk))
            h = hist.take(rows)
            yield rows, np.asarray(_binary_matrix(h, V).astype(self.B.dtype) @ self.B, dtype=np.float32)

    def recommend(self, histories, k: int, exclude_history: bool = False):
        self._fitted()
        hist = as_ragged(histories)
        n, V = len(hist), self.B.shape[0]
        _check_request(hist, V, k)
        self.last_items_scored = np.full(n, V, dtype=np.int64)
        if n == 0:
            return _empty(k)
        ids, scores = [], []
        for rows, s in self._chunks(hist):
            t = torch.from_numpy(s)  # (b, V)
            if exclude_history:
                mask_history_(t, hist.take(rows))
            i, v = topk_padded(t, k)
            ids.append(i)
            scores.append(v)
        return np.concatenate(ids), np.concatenate(scores)

    def score_items(self, histories, items) -> Ragged:
        """The scores of ``items[u]`` for user u, the same values ``recommend`` ranks."""
        self._fitted()
        hist, items = as_ragged(histories), as_ragged(items)
        V = self.B.shape[0]
        _check_request(hist, V, 1)
        _check_candidates(hist, items, V)
        out = np.zeros(len(items.values), dtype=np.float32)
        for rows, s in self._chunks(hist):
            c = items.take(rows)
            out[items.offsets[rows[0]] : items.offsets[rows[-1] + 1]] = s[c.row_ids(), c.values]
        self.last_items_scored = items.lengths.copy()
        return Ragged(out, items.offsets.copy())

    def save(self, path) -> None:
        B = self._fitted()
        with atomic_dir(path, "baseline") as tmp:
            np.savez(tmp / "weights.npz", B=B)
            meta = {"name": self.name, "n_items": B.shape[0], **{p: getattr(self, p) for p in self.PARAMS}}
            atomic_write_json(tmp / META, meta)

    @classmethod
    def load(cls, path) -> Self:
        meta = _read_meta(path, cls.name)
        rec = cls(**{p: meta[p] for p in cls.PARAMS})
        rec.B = _load_npz(Path(path) / "weights.npz")["B"]
        return rec


# ------------------------------------------------------------------ ALS (implicit)
class ALS(Recommender):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) from the ``implicit`` library (the
    ``als`` extra), on the binary training matrix; implicit's confidence convention: weight
    ``alpha`` on an observed pair, 1 on the others (preference 1 / 0), ridge ``regularization``.

    The users to score are the history rows, usually not training users: each is folded in
    by implicit's ``recalculate_user`` (the exact least-squares user step against the fitted
    item factors), then every item is scored by inner product, as ``BruteForce`` does.
    """

    name = "als"
    PARAMS = ("factors", "regularization", "alpha", "iterations", "seed")

    def __init__(self, factors: int = 64, regularization: float = 10.0, alpha: float = 10.0,
                 iterations: int = 15, seed: int = 0, threads: int = 0):
        if factors < 1 or iterations < 1:
            raise DRError(f"als needs factors >= 1 and iterations >= 1, got {factors}, {iterations}")
        self.factors, self.iterations, self.seed = int(factors), int(iterations), int(seed)
        self.regularization, self.alpha = float(regularization), float(alpha)
        self.threads = int(threads)
        self.model = None  # implicit's AlternatingLeastSquares once fitted or loaded
        self.exact: BruteForce | None = None  # over the item factors, users folded in

    def _new_model(self):
        cls, threadpool_limits = _import_implicit()
        with threadpool_limits(1, "blas"):  # implicit runs its own threads (and warns otherwise)
            return cls(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                       iterations=self.iterations, random_state=self.seed, num_threads=self.threads)

    def _set_items(self, model, item_factors: np.ndarray) -> Self:
        self.model = model
        self.exact = BruteForce(item_factors, encode=self._fold_in)
        return self

    def _fold_in(self, hist: Ragged) -> np.ndarray:
        """(n, factors) user factors of the history rows (zeros for an empty one)."""
        X = _binary_matrix(hist, self.exact.n_items)
        return self.model.recalculate_user(np.arange(len(hist)), X)

    def fit(self, dataset: Dataset) -> Self:
        model = self._new_model()
        _, threadpool_limits = _import_implicit()
        with threadpool_limits(1, "blas"):  # implicit runs its own threads
            model.fit(_binary_matrix(dataset.train, dataset.n_items), show_progress=False)
        return self._set_items(model, np.asarray(model.item_factors, dtype=np.float32))

    def _fitted(self) -> BruteForce:
        if self.exact is None:
            raise DRError("als recommender is not fitted")
        return self.exact

    def recommend(self, histories, k: int, exclude_history: bool = False):
        ids, scores = self._fitted().recommend(histories, k, exclude_history)
        self.last_items_scored = self.exact.last_items_scored
        return ids, scores

    def score_items(self, histories, items) -> Ragged:
        out = self._fitted().score_items(histories, items)
        self.last_items_scored = self.exact.last_items_scored
        return out

    def save(self, path) -> None:
        exact = self._fitted()
        with atomic_dir(path, "baseline") as tmp:
            save_file({"item_factors": exact.item_emb}, str(tmp / "item_factors.safetensors"))
            meta = {"name": self.name, "n_items": exact.n_items, **{p: getattr(self, p) for p in self.PARAMS}}
            atomic_write_json(tmp / META, meta)

    @classmethod
    def load(cls, path) -> Self:
        meta = _read_meta(path, cls.name)
        rec = cls(**{p: meta[p] for p in cls.PARAMS})
        emb = _load_safetensors(Path(path) / "item_factors.safetensors", "item_factors")
        model = rec._new_model()
        model.item_factors = emb
        return rec._set_items(model, emb)


# ------------------------------------------------------------------ brute force
class BruteForce(Recommender):
    """Exact maximum inner product between user embeddings and ``item_emb`` (V, e).

    ``encode(histories: Ragged) -> (n, e)`` gives the user embeddings; without it a user's
    embedding is the mean of its history items' embeddings (zeros for an empty history),
    which needs nothing but ``item_emb`` and so can be saved standalone. A single user is
    scored with numpy (its matrix-vector product is the faster one on CPU), a batch with a
    torch matmul + topk in chunks of at most ``batch_size`` users and ~512 MB of scores.
    """

    name = "brute-force"

    def __init__(
        self,
        item_emb: np.ndarray,
        encode: Callable[[Ragged], np.ndarray] | None = None,
        batch_size: int = 256,
    ):
        self.item_emb = np.ascontiguousarray(item_emb, dtype=np.float32)  # (V, e)
        if self.item_emb.ndim != 2:
            raise DRError(f"item embeddings must be (V, e), got shape {self.item_emb.shape}")
        self.encode = encode
        self.batch_size = int(batch_size)

    @property
    def n_items(self) -> int:
        return self.item_emb.shape[0]

    def fit(self, dataset: Dataset) -> Self:
        """Nothing to learn: the embeddings are given."""
        return self

    def user_embeddings(self, hist: Ragged) -> np.ndarray:
        """(n, e) float32 user embeddings of the history rows."""
        n, e = len(hist), self.item_emb.shape[1]
        if self.encode is not None:
            u = np.ascontiguousarray(self.encode(hist), dtype=np.float32)
            if u.shape != (n, e):
                raise DRError(f"encode returned shape {u.shape}, expected {(n, e)}")
            return u
        rows = torch.from_numpy(hist.row_ids())
        vecs = torch.from_numpy(self.item_emb[hist.values])  # (nnz, e)
        sums = torch.zeros(n, e).index_add_(0, rows, vecs)  # (n, e)
        lengths = torch.from_numpy(np.maximum(hist.lengths, 1)).float()
        return (sums / lengths[:, None]).numpy()

    def recommend(self, histories, k: int, exclude_history: bool = False):
        hist = as_ragged(histories)
        n, V = len(hist), self.n_items
        _check_request(hist, V, k)
        self.last_items_scored = np.full(n, V, dtype=np.int64)
        if n == 0:
            return _empty(k)
        if n == 1:
            s = self.item_emb @ self.user_embeddings(hist)[0]  # (V,)
            if exclude_history:
                s[hist.values] = -np.inf
            return _topk_row(s, k)
        chunk = max(1, min(self.batch_size, (1 << 27) // max(V, 1)))
        emb_t = torch.from_numpy(self.item_emb)  # (V, e)
        ids, scores = [], []
        for lo in range(0, n, chunk):
            h = hist.take(np.arange(lo, min(n, lo + chunk)))
            s = torch.from_numpy(self.user_embeddings(h)) @ emb_t.T  # (b, V)
            if exclude_history:
                mask_history_(s, h)
            i, v = topk_padded(s, k)
            ids.append(i)
            scores.append(v)
        return np.concatenate(ids), np.concatenate(scores)

    def score_items(self, histories, items) -> Ragged:
        """The inner products of user u's embedding with ``items[u]``, as ``recommend`` ranks them."""
        hist, items = as_ragged(histories), as_ragged(items)
        _check_request(hist, self.n_items, 1)
        _check_candidates(hist, items, self.n_items)
        u = self.user_embeddings(hist)  # (n, e)
        rows = items.row_ids()
        V = self.n_items
        if len(items.values) * 8 < len(hist) * V:  # few candidates: gather them
            out = np.einsum("me,me->m", u[rows], self.item_emb[items.values]).astype(np.float32)  # (nnz,)
        else:  # most of the catalogue: one matmul per chunk of users, then pick the candidates
            out = np.empty(len(items.values), dtype=np.float32)
            chunk = max(1, (1 << 24) // max(V, 1))
            for lo in range(0, len(hist), chunk):
                hi = min(len(hist), lo + chunk)
                a, b = items.offsets[lo], items.offsets[hi]
                full = u[lo:hi] @ self.item_emb.T  # (chunk, V)
                out[a:b] = full[rows[a:b] - lo, items.values[a:b]]
        self.last_items_scored = items.lengths.copy()
        return Ragged(out, items.offsets.copy())

    def _meta(self) -> dict:
        return {"name": self.name, "n_items": self.n_items, "dim": int(self.item_emb.shape[1])}

    def save(self, path) -> None:
        if self.encode is not None:
            raise DRError(
                f"{self.name} with a custom encode callable cannot be saved standalone; "
                "save the model that owns the encoder instead"
            )
        with atomic_dir(path, "baseline") as tmp:
            save_file({"item_emb": self.item_emb}, str(tmp / "item_emb.safetensors"))
            atomic_write_json(tmp / META, self._meta())

    @classmethod
    def load(cls, path) -> Self:
        _read_meta(path, cls.name)
        return cls(_load_safetensors(Path(path) / "item_emb.safetensors", "item_emb"))


# ------------------------------------------------------------------ HNSW
class HNSW(Recommender):
    """Approximate maximum inner product with faiss ``IndexHNSWFlat`` over ``item_emb``.

    Same user embeddings as ``BruteForce`` (``encode`` or the history mean). The index is
    built by ``fit`` (or the first ``recommend``); the search uses ``efSearch = ef_search``
    (default 2 k), raised to the number of ids fetched. ``last_items_scored`` is faiss's
    count of distance computations, averaged over the call's users.
    """

    name = "hnsw"

    def __init__(
        self,
        item_emb: np.ndarray,
        encode: Callable[[Ragged], np.ndarray] | None = None,
        M: int = 16,
        ef_construction: int = 200,
        ef_search: int | None = None,
    ):
        self.exact = BruteForce(item_emb, encode)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef_search = ef_search
        self.index = None  # faiss.IndexHNSWFlat once built

    @property
    def item_emb(self) -> np.ndarray:
        return self.exact.item_emb

    def build(self) -> Self:
        faiss = _import_faiss()
        index = faiss.IndexHNSWFlat(self.item_emb.shape[1], self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(self.item_emb)
        self.index = index
        return self

    def fit(self, dataset: Dataset | None = None) -> Self:
        """Build the index (the embeddings are given; ``dataset`` is not used)."""
        return self.build() if self.index is None else self

    def recommend(self, histories, k: int, exclude_history: bool = False):
        faiss = _import_faiss()
        hist = as_ragged(histories)
        n, V = len(hist), self.exact.n_items
        _check_request(hist, V, k)
        if n == 0:
            self.last_items_scored = np.zeros(0, dtype=np.int64)
            return _empty(k)
        self.fit()
        # over-fetch so that k remain after dropping up to |history| items
        extra = int(hist.lengths.max(initial=0)) if exclude_history else 0
        kk = max(1, min(V, k + extra))
        self.index.hnsw.efSearch = max(self.ef_search or 2 * k, kk)
        stats = faiss.cvar.hnsw_stats
        stats.reset()
        D, ids = self.index.search(self.exact.user_embeddings(hist), kk)  # (n, kk) each
        self.last_items_scored = np.full(n, stats.ndis / n)
        keep = ids >= 0
        if exclude_history:
            keep &= ~_in_history(ids, hist)
        return _select_top(ids.astype(np.int64), D, keep, k)

    def recall_against_exact(self, histories, k: int) -> float:
        """Mean over users of |HNSW top-k ∩ exact top-k| / |exact top-k|."""
        hist = as_ragged(histories)
        approx, _ = self.recommend(hist, k)
        exact, _ = self.exact.recommend(hist, k)
        found = _in_history(approx, Ragged.from_lists([r[r >= 0] for r in exact]))
        n_exact = (exact >= 0).sum(axis=1)  # (n,)
        ok = n_exact > 0
        return float((found.sum(axis=1)[ok] / n_exact[ok]).mean()) if ok.any() else float("nan")

    def save(self, path) -> None:
        if self.exact.encode is not None:
            raise DRError(
                f"{self.name} with a custom encode callable cannot be saved standalone; "
                "save the model that owns the encoder instead"
            )
        faiss = _import_faiss()
        self.fit()
        meta = {
            "name": self.name,
            "n_items": self.exact.n_items,
            "dim": int(self.item_emb.shape[1]),
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
        }
        with atomic_dir(path, "baseline") as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            atomic_write_json(tmp / META, meta)

    @classmethod
    def load(cls, path) -> Self:
        faiss = _import_faiss()
        meta = _read_meta(path, cls.name)
        file = Path(path) / "index.faiss"
        if not file.is_file():
            raise DRError(f"{file} not found")
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as e:
            raise DRError(f"{file} is corrupt ({e})") from None
        emb = index.reconstruct_n(0, index.ntotal)  # (V, e) the stored vectors
        rec = cls(emb, None, meta["M"], meta["ef_construction"], meta["ef_search"])
        rec.index = index
        return rec
