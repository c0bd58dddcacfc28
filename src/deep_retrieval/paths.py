"""Item -> J paths assignment, the path -> items index (CSR) and path statistics.

Paths are handled by their flat id only: path (c_0..c_{D-1}) has flat id
``sum_d c_d * K^(D-1-d)`` (int64), so ``n_paths = K**D`` may be ~10^8 and nothing
here allocates an array of size ``n_paths``; every per-path table holds only the
non-empty paths (sorted unique ids + searchsorted).
"""

from __future__ import annotations

import numpy as np

from .data.dataset import Ragged, unique_sorted


def random_assignment(V: int, J: int, n_paths: int, rng: np.random.Generator) -> np.ndarray:
    """(V, J) int64 flat path ids, uniform at random, J distinct paths per item.

    Vectorised: column j is drawn at once and the entries equal to an earlier column
    of their row are redrawn until none is (a handful of rounds unless J ~ n_paths;
    when ``4 * J > n_paths`` each row is a random J-subset taken from a permutation).
    """
    if not 1 <= J <= n_paths:
        raise ValueError(f"need 1 <= J <= n_paths, got J={J}, n_paths={n_paths}")
    if 4 * J > n_paths:  # tiny path space: (V, n_paths) is small
        keys = rng.random((V, n_paths))
        return np.argsort(keys, axis=1)[:, :J].astype(np.int64)
    out = rng.integers(0, n_paths, size=(V, J), dtype=np.int64)  # (V, J)
    for j in range(1, J):
        dup = (out[:, :j] == out[:, j : j + 1]).any(axis=1)  # (V,)
        while dup.any():
            rows = np.flatnonzero(dup)
            out[rows, j] = rng.integers(0, n_paths, size=len(rows), dtype=np.int64)
            dup[rows] = (out[rows, :j] == out[rows, j : j + 1]).any(axis=1)
    return out


class PathIndex:
    """CSR index path -> items over the sorted unique non-empty paths of an assignment.

    ``path_ids`` (P,) int64 sorted unique non-empty path ids, ``indptr`` (P+1,) int64,
    ``items`` (nnz,) int64: the items on ``path_ids[p]`` are
    ``items[indptr[p]:indptr[p+1]]``, ascending. Negative entries of the assignment
    (-1) are ignored.
    """

    def __init__(self, assignment: np.ndarray):
        a = np.asarray(assignment, dtype=np.int64)
        if a.ndim != 2:
            raise ValueError(f"assignment must be (V, J), got shape {a.shape}")
        V, J = a.shape
        self.n_items = V
        flat = a.reshape(-1)  # (V*J,)
        item = np.repeat(np.arange(V, dtype=np.int64), J)  # (V*J,)
        keep = flat >= 0
        flat, item = flat[keep], item[keep]
        order = np.argsort(flat, kind="stable")  # by path, then item (item is ascending)
        flat, self.items = flat[order], item[order]
        self.path_ids, counts = np.unique(flat, return_counts=True)  # (P,), (P,)
        self.indptr = np.zeros(len(self.path_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])

    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(path_ids (P,), counts (P,)) of the non-empty paths."""
        return self.path_ids, np.diff(self.indptr)

    def items_of(self, path: int) -> np.ndarray:
        """The items on one flat path id (empty if the path is empty)."""
        p = int(np.searchsorted(self.path_ids, path))
        if p == len(self.path_ids) or self.path_ids[p] != path:
            return np.zeros(0, dtype=np.int64)
        return self.items[self.indptr[p] : self.indptr[p + 1]]

    def candidates(self, flat) -> Ragged:
        """Row u: the sorted, de-duplicated union of the items on paths ``flat[u]``.

        ``flat`` is (n, B) int64 flat path ids (a numpy array or a CPU/GPU torch tensor;
        negative ids are skipped, as are empty paths). Vectorised over users: one
        searchsorted, one CSR gather and one sort of (user, item) keys.
        """
        if hasattr(flat, "detach"):  # torch tensor
            flat = flat.detach().cpu().numpy()
        flat = np.asarray(flat, dtype=np.int64)
        if flat.ndim == 1:
            flat = flat[None, :]
        n, B = flat.shape
        P, V = len(self.path_ids), max(self.n_items, 1)
        if P == 0:
            return Ragged(np.zeros(0, dtype=np.int64), np.zeros(n + 1, dtype=np.int64))
        f = flat.reshape(-1)  # (n*B,)
        pos = np.minimum(np.searchsorted(self.path_ids, f), P - 1)  # (n*B,)
        hit = (self.path_ids[pos] == f) & (f >= 0)
        lengths = np.where(hit, self.indptr[pos + 1] - self.indptr[pos], 0)  # (n*B,)
        starts = np.cumsum(lengths) - lengths  # where each slice lands in the gather
        # gathered position k of slice r reads items[indptr[pos_r] + k - starts_r]
        shift = np.repeat(self.indptr[pos] - starts, lengths)  # (total,)
        items = self.items[np.arange(len(shift), dtype=np.int64) + shift]  # (total,)
        users = np.repeat(np.arange(n * B, dtype=np.int64) // B, lengths)  # (total,)
        key = unique_sorted(users * V + items)  # sorted by (user, item), duplicates gone
        u = key // V
        return Ragged.from_lengths(key - u * V, np.bincount(u, minlength=n))

def path_stats(assignment: np.ndarray, n_paths: int) -> dict:
    """Statistics of path sizes (items per path) of an assignment (V, J); JSON-able.

    ``mean``, ``median`` and ``p99`` (numpy's linear interpolation) are over the
    non-empty paths. ``hist_lo[k]`` / ``hist_counts[k]``: the number of non-empty paths
    with size in ``[2^k, 2^(k+1))``.
    """
    a = np.asarray(assignment, dtype=np.int64).reshape(-1)
    _, counts = np.unique(a[a >= 0], return_counts=True)
    if len(counts) == 0:
        return {
            "n_paths": int(n_paths), "non_empty": 0, "empty": int(n_paths), "largest": 0,
            "mean": 0.0, "median": 0.0, "p99": 0.0, "hist_lo": [], "hist_counts": [],
        }
    bins = np.floor(np.log2(counts)).astype(np.int64)  # size in [2^b, 2^(b+1))
    hist = np.bincount(bins)
    return {
        "n_paths": int(n_paths),
        "non_empty": int(len(counts)),
        "empty": int(n_paths - len(counts)),
        "largest": int(counts.max()),
        "mean": float(counts.mean()),
        "median": float(np.median(counts)),
        "p99": float(np.percentile(counts, 99)),
        "hist_lo": [int(2**k) for k in range(len(hist))],
        "hist_counts": [int(h) for h in hist],
    }
