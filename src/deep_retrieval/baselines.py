"""Baselines behind the one recommender contract: popularity, Item-CF, brute force, HNSW.

Every class here honours ``Recommender`` (see ``recommender.py``): ``recommend`` returns
``(n, k)`` int64 ids padded with -1 and ``(n, k)`` float32 scores padded with -inf, sorted
by score; with ``exclude_history=True`` no history item is ever returned. Each saves to a
directory (written atomically) holding ``recommender.json`` plus arrays without pickles.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file, save_file

from .artifacts import atomic_dir, atomic_write_json, read_json
from .data.dataset import Dataset, Ragged, as_ragged
from .errors import DRError
from .recommender import Recommender, mask_history_, pairs_in_history, topk_padded

META = "recommender.json"
FAISS_MISSING = "hnsw needs the `ann` extra: pip install 'deep-retrieval[ann]'"


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
    try:
        with np.load(file, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DRError(f"{file} not found") from None
    except Exception as e:  # zipfile / value errors from a corrupt file
        raise DRError(f"{file} is corrupt ({e})") from None


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
    """

    name = "popularity"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # (V,) int64
        self.order: np.ndarray | None = None  # (V,) items by decreasing count

    def _set_counts(self, counts: np.ndarray) -> Self:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.order = np.argsort(-self.counts, kind="stable")
        return self

    def fit(self, dataset: Dataset) -> Self:
        return self._set_counts(np.bincount(dataset.train.values, minlength=dataset.n_items))

    def recommend(self, histories, k: int, exclude_history: bool = False):
        if self.counts is None:
            raise DRError("popularity recommender is not fitted")
        hist = as_ragged(histories)
        n, V = len(hist), len(self.counts)
        _check_request(hist, V, k)
        self.last_items_scored = np.full(n, V, dtype=np.int64)  # the ranking covers all V
        if n == 0:
            return _empty(k)
        # at most |history| of the first k + |history| items are masked
        extra = int(hist.lengths.max(initial=0)) if exclude_history else 0
        w = min(V, k + extra)
        ids = np.broadcast_to(self.order[:w], (n, w))  # (n, w)
        keep = ~_in_history(ids, hist) if exclude_history else np.ones((n, w), bool)
        return _select_top(ids, self.counts[ids].astype(np.float32), keep, k)

    def save(self, path) -> None:
        if self.counts is None:
            raise DRError("popularity recommender is not fitted")
        with atomic_dir(path) as tmp:
            np.savez(tmp / "counts.npz", counts=self.counts)
            atomic_write_json(tmp / META, {"name": self.name, "n_items": len(self.counts)})

    @classmethod
    def load(cls, path) -> Self:
        _read_meta(path, cls.name)
        return cls()._set_counts(_load_npz(Path(path) / "counts.npz")["counts"])


# ------------------------------------------------------------------ item-cf
def item_neighbours(
    X: sp.csr_matrix, neighbours: int, shrink: float = 0.0, block_work: int = 1 << 22
) -> sp.csr_matrix:
    """Top-``neighbours`` cosine neighbours of every item, as a (V, V) float32 CSR.

    ``X`` is the binary (users, V) matrix. ``sim[i, j] = |U_i ∩ U_j| / (sqrt(n_i n_j) +
    shrink)`` for i != j, computed in blocks of item rows whose product work (the sum of
    the lengths of their users' rows) is about ``block_work``, so no dense V x V matrix is
    ever built. Row i keeps its ``neighbours`` largest similarities, compared as the
    float32 values stored (ties: lower j first).
    """
    X = sp.csr_matrix(X, dtype=np.float32)
    V = X.shape[1]
    XT = X.T.tocsr()  # (V, U)
    norm = np.sqrt(np.diff(XT.indptr).astype(np.float64))  # (V,) sqrt(users per item)
    work = np.cumsum(XT @ np.diff(X.indptr).astype(np.float64))  # (V,) cumulative product work
    counts_out, cols_out, sims_out = [], [], []  # per block: kept per row, columns, values
    lo = 0
    while lo < V:
        done = work[lo - 1] if lo else 0.0
        hi = max(lo + 1, int(np.searchsorted(work, done + block_work, side="right")))
        C = (XT[lo:hi] @ X).tocsr()  # (hi - lo, V) co-occurrence counts, exact in float32
        C.sort_indices()  # columns ascending within a row: ties below go to the lower item
        rows = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(C.indptr))  # local rows
        cols = C.indices.astype(np.int64)
        sim = (C.data / (norm[lo + rows] * norm[cols] + shrink)).astype(np.float32)
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


class ItemCF(Recommender):
    """Item-based collaborative filtering (the paper's Item-CF row).

    ``fit`` keeps the top ``neighbours`` cosine neighbours of each item (see
    ``item_neighbours``); a user's score for item j is the sum of ``sim[i, j]`` over the
    distinct items i of its history. Only items with a positive score are recommended,
    so a row can be shorter than k (padded); ``last_items_scored`` is that candidate count.
    """

    name = "item-cf"

    def __init__(self, neighbours: int = 200, shrink: float = 0.0, batch_size: int = 1024):
        if neighbours < 1:
            raise DRError(f"item-cf needs neighbours >= 1, got {neighbours}")
        self.neighbours = int(neighbours)
        self.shrink = float(shrink)
        self.batch_size = int(batch_size)
        self.sim: sp.csr_matrix | None = None  # (V, V) top neighbours per row

    def fit(self, dataset: Dataset) -> Self:
        X = _binary_matrix(dataset.train, dataset.n_items)  # (train users, V)
        self.sim = item_neighbours(X, self.neighbours, self.shrink)
        return self

    def recommend(self, histories, k: int, exclude_history: bool = False):
        if self.sim is None:
            raise DRError("item-cf recommender is not fitted")
        hist = as_ragged(histories)
        n, V = len(hist), self.sim.shape[0]
        _check_request(hist, V, k)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        scored = np.zeros(n, dtype=np.int64)
        for lo in range(0, n, self.batch_size):
            h = hist.take(np.arange(lo, min(n, lo + self.batch_size)))
            S = (_binary_matrix(h, V) @ self.sim).tocsr()  # (b, V) candidate scores
            S.sort_indices()  # ties below go to the lower item
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

    def save(self, path) -> None:
        if self.sim is None:
            raise DRError("item-cf recommender is not fitted")
        W = self.sim
        with atomic_dir(path) as tmp:
            np.savez(tmp / "neighbours.npz", indptr=W.indptr, indices=W.indices, data=W.data)
            meta = {
                "name": self.name,
                "n_items": W.shape[0],
                "neighbours": self.neighbours,
                "shrink": self.shrink,
            }
            atomic_write_json(tmp / META, meta)

    @classmethod
    def load(cls, path) -> Self:
        meta = _read_meta(path, cls.name)
        a = _load_npz(Path(path) / "neighbours.npz")
        V = int(meta["n_items"])
        rec = cls(int(meta["neighbours"]), float(meta.get("shrink", 0.0)))
        rec.sim = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(V, V))
        return rec


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

    def _meta(self) -> dict:
        return {"name": self.name, "n_items": self.n_items, "dim": int(self.item_emb.shape[1])}

    def save(self, path) -> None:
        if self.encode is not None:
            raise DRError(
                f"{self.name} with a custom encode callable cannot be saved standalone; "
                "save the model that owns the encoder instead"
            )
        with atomic_dir(path) as tmp:
            save_file({"item_emb": self.item_emb}, str(tmp / "item_emb.safetensors"))
            atomic_write_json(tmp / META, self._meta())

    @classmethod
    def load(cls, path) -> Self:
        _read_meta(path, cls.name)
        file = Path(path) / "item_emb.safetensors"
        if not file.is_file():
            raise DRError(f"{file} not found")
        try:
            emb = load_file(str(file))["item_emb"]
        except Exception as e:  # safetensors raises its own errors on a corrupt file
            raise DRError(f"{file} is corrupt ({e})") from None
        return cls(emb)


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
        with atomic_dir(path) as tmp:
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
