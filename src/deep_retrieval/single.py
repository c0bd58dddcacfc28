"""One user's search in compiled code: ``fast.Retriever.search`` for small blocks of users
(up to ``fast.ONE_BY_ONE``, each user alone) and for every user of a path-major Retriever.

The same algorithm as the batched numpy path (``fast.Retriever.beam``, ``candidates``, the
filters, the inner-product rerank and the top-k), written as three numba kernels over the
Retriever's arrays. At batch 1 numpy spends most of its time between operations (a beam of
B = 20 over K = 10 runs ~40 numpy calls of a few microseconds each on arrays of a few
hundred numbers); here the whole search is a few calls.

- ``beam_one``: the top ``B`` paths of one user by cumulative log-probability, as flat ids,
  best first (``fast.Retriever.beam``'s order).
- ``candidates_one``: the distinct items on those paths, in order of first appearance,
  minus ``drop`` (the user's own items to skip, in any order) and ``exclude``, kept to
  ``allow`` when given. ``mark`` is a (V,) bool scratch array, all False on entry and again
  on return.
- ``rerank_one``: inner product of each candidate's embedding with the user's, plus an
  optional per-candidate term, then the top k, best first. The embeddings come from the (V, e)
  item table or from a path-major copy (a row per entry of the path index, ``beam.path_major``):
  there a path's candidates are consecutive rows, which a large catalogue's random row
  gathers are not.

The kernels release the GIL (``nogil``): a server's threads search concurrently; each thread
brings its own ``mark`` array (``fast.Retriever`` keeps one per thread).

Selection rule everywhere (``_top_sorted``): the k largest, sorted descending, ties to the
lower position. numpy's ``argpartition`` breaks ties at the k-th place arbitrarily, so the
two paths agree except between exactly equal floats (and on float rounding of the sums).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _worse(score, a, b):
    """Entry a ranks below entry b: a lower score, or the same score at a higher position."""
    return score[a] < score[b] or (score[a] == score[b] and a > b)


@njit(cache=True, nogil=True)
def _sift_down(heap, pos, size, score):
    while True:
        c = 2 * pos + 1
        if c >= size:
            return
        if c + 1 < size and _worse(score, heap[c + 1], heap[c]):
            c += 1
        if not _worse(score, heap[c], heap[pos]):
            return
        heap[c], heap[pos] = heap[pos], heap[c]
        pos = c


@njit(cache=True, nogil=True)
def _top_sorted(score, k):
    """Positions of the k largest entries of ``score`` (n,), sorted descending, ties to the lower.

    A heap of the k best so far, its worst at the root: O(n log k).
    """
    n = score.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    heap = np.empty(k, dtype=np.int64)
    for i in range(k):  # the first k, then heapify
        heap[i] = i
    for pos in range(k // 2 - 1, -1, -1):
        _sift_down(heap, pos, k, score)
    for i in range(k, n):
        if _worse(score, heap[0], i):  # i beats the worst kept
            heap[0] = i
            _sift_down(heap, 0, k, score)
    out = np.empty(k, dtype=np.int64)
    for size in range(k, 0, -1):  # pop the worst into the last free place
        out[size - 1] = heap[0]
        heap[0] = heap[size - 1]
        _sift_down(heap, 0, size - 1, score)
    return out


@njit(cache=True, nogil=True)
def _head(mlp, d, pre):
    """Layer d's MLP after its first Linear: ReLU, Linear, ... : (b, H) -> (b, K).

    ``mlp`` = (W, b, shape, w_off, b_off, L): every Linear's weight (in, out) flattened into
    W and its bias into b; Linear j of layer d is entry d*L + j of ``shape`` (in, out),
    ``w_off`` and ``b_off`` (its start in W and b).
    """
    W, b, shape, w_off, b_off, L = mlp
    x = pre
    for j in range(d * L, d * L + L):
        n_in, n_out = shape[j, 0], shape[j, 1]
        w = W[w_off[j] : w_off[j] + n_in * n_out].reshape(n_in, n_out)
        x = np.dot(np.maximum(x, np.float32(0.0)), w)  # (b, out)
        x += b[b_off[j] : b_off[j] + n_out]
    return x


@njit(cache=True, nogil=True)
def beam_one(u, B, K, D, w_user, b_user, tables, mlp):
    """Top paths of one user: u (e,) -> flat path ids (B',) int64, cumulative log p (B',) float32.

    ``w_user`` (e, D*H) and ``b_user`` (D*H,) every layer's user share of its first Linear;
    ``tables`` the prefix tables of layers 1..D-1 stacked, (K*D*(D-1)/2, H): layer d's
    (d*K, H) table starts at row K*d*(d-1)/2; ``mlp`` the Linears after the first (``_head``).
    B' = min(B, K^D), best first, as ``fast.Retriever.beam``.
    """
    H = b_user.shape[0] // D
    user = b_user.copy()  # (D*H,) every layer's user share: u @ w_user + b_user
    for i in range(u.shape[0]):
        for c in range(user.shape[0]):
            user[c] += u[i] * w_user[i, c]
    pre = np.empty((1, H), dtype=np.float32)
    for h in range(H):
        pre[0, h] = user[h]
    score = _head(mlp, 0, pre)[0].copy()  # (K,) layer 0: one distribution
    _log_softmax_add(score, np.float32(0.0))
    top = _top_sorted(score, min(B, K))  # (b,)
    b = top.shape[0]
    paths = np.empty((b, D), dtype=np.int64)  # (b, D): the first d columns are filled
    cum = np.empty(b, dtype=np.float32)  # (b,) sorted descending
    for j in range(b):
        paths[j, 0], cum[j] = top[j], score[top[j]]
    for d in range(1, D):
        base = K * d * (d - 1) // 2  # layer d's table: rows base .. base + d*K - 1
        pre = np.empty((b, H), dtype=np.float32)  # (b, H) prefix + user share of layer d
        for j in range(b):
            for h in range(H):
                pre[j, h] = user[d * H + h] + tables[base + paths[j, 0], h]
            for i in range(1, d):
                row = base + i * K + paths[j, i]
                for h in range(H):
                    pre[j, h] += tables[row, h]
        logits = _head(mlp, d, pre)  # (b, K)
        score = np.empty(b * K, dtype=np.float32)  # (b*K,) cumulative log-probabilities
        for j in range(b):
            row_score = logits[j].copy()
            _log_softmax_add(row_score, cum[j])
            for c in range(K):
                score[j * K + c] = row_score[c]
        top = _top_sorted(score, min(B, b * K))  # (b',)
        nb = top.shape[0]
        new = np.empty((nb, D), dtype=np.int64)
        cum = np.empty(nb, dtype=np.float32)
        for j in range(nb):
            for i in range(d):
                new[j, i] = paths[top[j] // K, i]  # the beam it came from
            new[j, d] = top[j] % K  # its node at layer d
            cum[j] = score[top[j]]
        paths, b = new, nb
    flat = np.zeros(b, dtype=np.int64)
    for j in range(b):
        for d in range(D):
            flat[j] = flat[j] * K + paths[j, d]
    return flat, cum


@njit(cache=True, nogil=True)
def _log_softmax_add(x, base):
    """``x = base + log_softmax(x)`` in place, x (K,) float32."""
    mx = x.max()
    s = np.float32(0.0)
    for i in range(x.shape[0]):
        s += math.exp(x[i] - mx)
    shift = base - (np.float32(math.log(s)) + mx)
    for i in range(x.shape[0]):
        x[i] += shift


@njit(cache=True, nogil=True)
def _in_sorted(sorted_set, x):
    if sorted_set.shape[0] == 0:
        return False
    p = np.searchsorted(sorted_set, x)
    return p < sorted_set.shape[0] and sorted_set[p] == x


@njit(cache=True, nogil=True)
def candidates_one(flat, path_ids, indptr, items, mark, drop, exclude, allow, use_allow):
    """The distinct items on the paths ``flat`` (B,) after the filters, as slots -> (m,) int64.

    A slot is a position in ``items`` (the path index's item array, path by path): ``items[slots]``
    are the candidates, in order of first appearance, and the slot of an item is that of its
    first appearance. ``drop`` item ids in any order (repeats and ids outside [0, V) are
    harmless); ``exclude`` and ``allow`` sorted distinct item ids, ``allow`` applied only when
    ``use_allow``. ``mark`` (V,) bool scratch, all False on entry and again on return: the
    dropped items are marked first, so that the gather skips them as it skips an item taken.
    """
    P, V = path_ids.shape[0], mark.shape[0]
    for v in drop:
        if 0 <= v < V:
            mark[v] = True
    start = np.empty(flat.shape[0], dtype=np.int64)
    stop = np.empty(flat.shape[0], dtype=np.int64)
    total = 0
    for j in range(flat.shape[0]):
        p = np.searchsorted(path_ids, flat[j]) if P else 0
        if p < P and path_ids[p] == flat[j]:
            start[j], stop[j] = indptr[p], indptr[p + 1]
        else:
            start[j], stop[j] = 0, 0
        total += stop[j] - start[j]
    out = np.empty(total, dtype=np.int64)
    c = 0
    for j in range(flat.shape[0]):
        for t in range(start[j], stop[j]):
            v = items[t]
            if not mark[v]:
                mark[v] = True
                out[c] = t
                c += 1
    for v in drop:
        if 0 <= v < V:
            mark[v] = False
    m = 0
    for i in range(c):
        t = out[i]
        v = items[t]
        mark[v] = False
        if _in_sorted(exclude, v) or (use_allow and not _in_sorted(allow, v)):
            continue
        out[m] = t
        m += 1
    return out[:m]


@njit(cache=True, nogil=True, fastmath=True)
def _dot(a, b):
    """a . b of two (e,) float32 vectors; ``fastmath`` lets the sum vectorise (reassociated)."""
    acc = np.float32(0.0)
    for j in range(a.shape[0]):
        acc += a[j] * b[j]
    return acc


@njit(cache=True, nogil=True)
def rerank_one(slots, items, table, by_slot, u, add, use_add, k):
    """Top k of the candidates ``items[slots]`` (m,) by embedding . u (+ ``add`` (m,) when
    ``use_add``) -> item ids (k', ) int64, scores (k',) float32, best first, k' = min(k, m).

    ``table`` holds the embeddings by item (``table[items[slot]]``, the (V, e) matrix) or, when
    ``by_slot``, by slot (``table[slot]``: the path-major copy, one row per (path, item) entry,
    so that a path's candidates are read from consecutive rows).
    """
    m = slots.shape[0]
    s = np.empty(m, dtype=np.float32)
    for i in range(m):
        row = table[slots[i]] if by_slot else table[items[slots[i]]]
        acc = _dot(row, u)
        s[i] = acc + add[i] if use_add else acc
    top = _top_sorted(s, k)
    ids = np.empty(top.shape[0], dtype=np.int64)
    for i in range(top.shape[0]):
        ids[i] = items[slots[top[i]]]
    return ids, s[top]
