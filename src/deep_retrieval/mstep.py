"""The M-step (SPEC 5): path scores per item, their streaming estimate, and the
penalised coordinate descent of Algorithm 2.

Paths are flat int64 ids throughout (see ``paths.py``); nothing allocates an array
of size K^D unless the ids in play are small (see ``coordinate_descent``).

Ordering rule used everywhere a row of scores is ranked: score descending (as a
float32, the stored precision), ties by path id ascending; empty slots (path -1,
score 0) last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .paths import random_assignment

_BLOCK = 1 << 16  # rows per block in penalised_objective (bounds the temporaries)
_DENSE_LIMIT = 1 << 25  # path ids below this index the size array directly


@dataclass
class ScoreTable:
    """The top-S candidate paths of every item with their scores s[v, c].

    ``paths`` (V, S) int64 flat ids, -1 = empty slot; ``scores`` (V, S) float32, 0 in
    empty slots. Every row holds distinct paths, sorted by score descending (ties by
    path id), empty slots last.
    """

    paths: np.ndarray  # (V, S) int64
    scores: np.ndarray  # (V, S) float32

    @staticmethod
    def empty(V: int, S: int) -> ScoreTable:
        return ScoreTable(np.full((V, S), -1, dtype=np.int64), np.zeros((V, S), dtype=np.float32))

    @property
    def V(self) -> int:
        return self.paths.shape[0]

    @property
    def S(self) -> int:
        return self.paths.shape[1]

    def lengths(self) -> np.ndarray:
        """(V,) number of filled slots per item."""
        return (self.paths >= 0).sum(axis=1)


# ----------------------------------------------------------------- collecting scores
def collect_scores(
    targets: np.ndarray, paths: np.ndarray, probs: np.ndarray, V: int, S: int
) -> ScoreTable:
    """s'[v, c] = sum over examples i with target v of p(c | x_i), top S per item.

    ``targets`` (N,) int64 items; ``paths`` (N, S') int64 flat ids that example i's
    beam returned (-1 = none); ``probs`` (N, S') p(c | x_i) of those paths (entries
    with p <= 0 are skipped). Sums are exact (float64, in the order of the input) over
    the whole input before the top-S cut. One compiled pass (``_collect_kernel``): the
    entries bucketed by item (a counting sort), each item's paths summed in a dense
    scratch, its distinct paths sorted. Memory is about 16 bytes per (example, path)
    entry: feed chunks and ``merge_sum`` them when N * S' is large.
    """
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    paths = np.ascontiguousarray(paths, dtype=np.int64)
    probs = np.ascontiguousarray(probs)
    if probs.dtype not in (np.float32, np.float64):
        probs = probs.astype(np.float64)
    if paths.shape != probs.shape or paths.ndim != 2 or paths.shape[0] != len(targets):
        raise ValueError(f"need targets (N,), paths and probs (N, S'); got "
                         f"{targets.shape}, {paths.shape}, {probs.shape}")
    if len(targets) and (targets.min() < 0 or targets.max() >= V):
        raise ValueError(f"targets must lie in [0, {V})")
    if paths.size == 0 or S < 1:
        return ScoreTable.empty(V, S)
    ids = None
    if int(paths.max()) >= _DENSE_LIMIT:  # path ids by rank among those in play (order kept)
        ids, inv = np.unique(paths, return_inverse=True)
        paths = inv.reshape(paths.shape) - (1 if ids[0] < 0 else 0)
        ids = ids[ids >= 0]
    out_p, out_s = _collect_kernel(targets, paths, probs, V, S, int(paths.max()) + 1)
    if ids is not None:
        out_p = np.where(out_p >= 0, ids[out_p.clip(min=0)], -1)
    return ScoreTable(out_p, out_s)


@njit(cache=True)
def _collect_kernel(targets, paths, probs, V, S, n_c):
    """``collect_scores`` on path ids in [0, n_c) (-1 = none): (V, S) paths and scores."""
    N, W = paths.shape
    start = np.zeros(V + 1, dtype=np.int64)  # entries of item v: start[v] .. start[v + 1]
    for i in range(N):
        for k in range(W):
            if paths[i, k] >= 0 and probs[i, k] > 0:
                start[targets[i] + 1] += 1
    for v in range(V):
        start[v + 1] += start[v]
    ent_c = np.empty(start[V], dtype=np.int64)
    ent_p = np.empty(start[V], dtype=np.float64)
    pos = start[:V].copy()
    longest = 0
    for v in range(V):
        longest = max(longest, start[v + 1] - start[v])
    for i in range(N):  # bucket by item, keeping the input's order within an item
        v = targets[i]
        for k in range(W):
            if paths[i, k] >= 0 and probs[i, k] > 0:
                ent_c[pos[v]] = paths[i, k]
                ent_p[pos[v]] = np.float64(probs[i, k])
                pos[v] += 1
    acc = np.zeros(max(n_c, 1), dtype=np.float64)  # an item's sums by path; 0 = not seen
    distinct = np.empty(longest, dtype=np.int64)
    s32 = np.empty(longest, dtype=np.float32)
    key = np.empty(longest, dtype=np.int64)
    out_p = np.full((V, S), -1, dtype=np.int64)
    out_s = np.zeros((V, S), dtype=np.float32)
    for v in range(V):
        m = 0
        for e in range(start[v], start[v + 1]):
            c = ent_c[e]
            if acc[c] == 0.0:  # sums of p > 0 stay > 0
                distinct[m] = c
                m += 1
            acc[c] += ent_p[e]
        for j in range(m):
            s32[j] = np.float32(acc[distinct[j]])
            acc[distinct[j]] = 0.0
        # one key per path: score descending, then path id ascending (< 2^25 here). The
        # bits of a float32 in [0, inf] order like the float and lie in [0, 0x7F800000], so
        # 0x7FFFFFFF - bits is >= 0 and descending in the score
        bits = s32[:m].view(np.uint32)
        for j in range(m):
            key[j] = (np.int64(0x7FFFFFFF - np.int64(bits[j])) << 32) | distinct[j]
        order = np.argsort(key[:m])
        for r in range(min(S, m)):
            out_p[v, r] = distinct[order[r]]
            out_s[v, r] = s32[order[r]]
    return out_p, out_s


# ------------------------------------------------------------- merging two tables
@njit(cache=True)
def _in_order(x32, p, n):
    """True if (x32 descending, ties by path ascending) already holds for the n entries."""
    for k in range(1, n):
        if x32[k] > x32[k - 1] or (x32[k] == x32[k - 1] and p[k] < p[k - 1]):
            return False
    return True


@njit(cache=True)
def _union_kernel(pa, sa, pb, sb, wa, fill, out_p, out_s):
    """Row-wise union of two lists per row, the S = out_p.shape[1] best kept, into out_*.

    For path c in row r of a (R, Sa) or b (R, Sb), the value is
    ``wa * (sa[r, c] if c in a[r] else fill[r]) + (sb[r, c] if c in b[r] else 0)``,
    computed in float64 (``wa * sa + sb`` for a path in both, ``sb + wa * fill`` for one
    only in b) and ranked as float32: descending, ties by path id ascending. Rows of a and
    of b hold distinct paths. One pass over the rows; a row with entries on one side only
    that keep their order (a decayed row, a first list) is copied without sorting.
    """
    R, Sa = pa.shape
    Sb = pb.shape[1]
    S = out_p.shape[1]
    W = Sa + Sb
    p = np.empty(W, dtype=np.int64)
    x = np.empty(W, dtype=np.float64)
    from_b = np.empty(W, dtype=np.bool_)
    up = np.empty(W, dtype=np.int64)
    ux = np.empty(W, dtype=np.float64)
    ub = np.empty(W, dtype=np.bool_)
    x32 = np.empty(W, dtype=np.float32)
    for r in range(R):
        n = 0
        for k in range(Sa):
            if pa[r, k] >= 0:
                p[n] = pa[r, k]
                x[n] = wa * np.float64(sa[r, k])
                from_b[n] = False
                n += 1
        na = n
        for k in range(Sb):
            if pb[r, k] >= 0:
                p[n] = pb[r, k]
                x[n] = np.float64(sb[r, k])
                from_b[n] = True
                n += 1
        if n == 0:
            continue
        add_b = wa * fill[r]
        sorted_by_path = False
        if na == 0 or na == n:  # one side only: no path in both
            m = n
            for k in range(m):
                up[k] = p[k]
                ux[k] = x[k]
                ub[k] = from_b[k]
        else:
            order = np.argsort(p[:n], kind="mergesort")  # by path; a's copy before b's
            m = 0
            for i in range(n):
                k = order[i]
                if m > 0 and p[k] == up[m - 1]:
                    ux[m - 1] += x[k]  # in both: wa * s + s'
                    continue
                up[m] = p[k]
                ux[m] = x[k]
                ub[m] = from_b[k]
                m += 1
            sorted_by_path = True
        for k in range(m):
            ux[k] += add_b if ub[k] else 0.0  # only in b: wa * fill + s'
            x32[k] = np.float32(ux[k])
        if _in_order(x32, up, m):
            for i in range(min(S, m)):
                out_p[r, i] = up[i]
                out_s[r, i] = x32[i]
            continue
        if sorted_by_path:
            by_path = np.arange(m)
        else:
            by_path = np.argsort(up[:m], kind="mergesort")
        neg = np.empty(m, dtype=np.float32)
        for i in range(m):
            neg[i] = -x32[by_path[i]]
        top = np.argsort(neg, kind="mergesort")  # score descending, ties by path ascending
        for i in range(min(S, m)):
            j = by_path[top[i]]
            out_p[r, i] = up[j]
            out_s[r, i] = x32[j]


def _merge(a: ScoreTable, b: ScoreTable, wa: float, fill: np.ndarray, S: int) -> ScoreTable:
    if a.V != b.V:
        raise ValueError(f"tables cover different item counts: {a.V} and {b.V}")
    out = ScoreTable.empty(a.V, S)
    _union_kernel(a.paths, a.scores, b.paths, b.scores, float(wa),
                  np.ascontiguousarray(fill, dtype=np.float64), out.paths, out.scores)
    return out


def merge_sum(a: ScoreTable, b: ScoreTable, S: int | None = None) -> ScoreTable:
    """Sum two chunk tables of the same window: s[v, c] = a[v, c] + b[v, c], top S.

    Exact when each chunk kept every path of each item (at most S per item per chunk);
    otherwise a path cut from one chunk's top S loses that chunk's share.
    """
    return _merge(a, b, 1.0, np.zeros(a.V), S or max(a.S, b.S))


def streaming_update(
    old: ScoreTable, new: ScoreTable, eta: float, S: int | None = None
) -> ScoreTable:
    """SPEC 5's streaming estimate, per item v (S defaults to ``old.S``)::

        min_score = min of v's recorded scores (0 if v has no recorded entry)
        in both:          eta * s + s'
        only in new:      eta * min_score + s'
        only in recorded: eta * s
        keep the S largest (ties by path id)

    So an item with no recorded list takes the new list as is, an item with no new
    list decays, and a recorded list shorter than S takes its minimum over the
    entries it has (the empty slots are not scores of 0).
    """
    rec = old.paths >= 0
    min_score = np.where(rec, old.scores.astype(np.float64), np.inf).min(axis=1)  # (V,)
    min_score[~rec.any(axis=1)] = 0.0
    return _merge(old, new, float(eta), min_score, S or old.S)


# ------------------------------------------------------------- coordinate descent
@njit(cache=True)
def _penalty_step(x, power):
    """f(x + 1) - f(x) for f(x) = x^p / p; a polynomial for p = 4 and p = 2."""
    if power == 4.0:
        return ((x + 1.5) * x + 1.0) * x + 0.25
    if power == 2.0:
        return x + 0.5
    return ((x + 1.0) ** power - x**power) / power


@njit(cache=True)
def _first_unsorted_row(scores):
    """-1 if every row is sorted descending, else the first row that is not."""
    V, S = scores.shape
    for v in range(V):
        for k in range(1, S):
            if scores[v, k] > scores[v, k - 1]:
                return v
    return -1


@njit(cache=True, inline="always")
def _taken(cur, v, j, c):
    """Is path c among item v's new paths 0..j-1?"""
    for i in range(j):
        if cur[v, i] == c:
            return True
    return False


@njit(cache=True)
def _cd_kernel(cand, score, nv, prev, reserve, reserve_row, J, alpha, power, T, sizes, explore):
    """Algorithm 2 on dense slots (see ``coordinate_descent``); returns (V, J) slots.

    ``sizes`` (n_slots,) zeros, int32 when V * J < 2^31 (half the cache footprint of the
    random size look-ups, the kernel's main cost), else int64.
    """
    V, S = cand.shape
    cur = np.empty((V, J), dtype=np.int64)  # during item v: new paths 0..j-1, old j..J-1
    bound_pen = alpha * _penalty_step(0.0, power)  # the smallest penalty step
    # explore: each row's floor (lowest positive score) and which previous paths it lacks
    floor = np.zeros(V if explore else 0)
    outside = np.zeros((V if explore else 0, J), dtype=np.bool_)
    if explore:
        for v in range(V):
            for k in range(S):
                if cand[v, k] < 0 or not score[v, k] > 0.0:
                    break
                floor[v] = np.float64(score[v, k])
            for i in range(J):
                c = prev[v, i]
                outside[v, i] = c >= 0
                for k in range(S):
                    if cand[v, k] == c:
                        outside[v, i] = False
    for t in range(T):
        for v in range(V):
            w = nv[v]
            partial = 0.0
            for j in range(J):
                if t > 0:
                    sizes[cur[v, j]] -= 1  # take v out of its old path j
                best = -1
                best_val = -np.inf
                best_s = 0.0
                if w > 0:
                    # gain of the last slot whose log was taken: it bounds every later
                    # slot's gain (scores descend, log is monotone), so a slot whose
                    # penalty alone sinks it below best_val needs no log
                    gmax = np.inf
                    for k in range(S):
                        sc = np.float64(score[v, k])
                        c = cand[v, k]
                        if c < 0 or not sc > 0.0:
                            break  # empty slots (and zero scores) are last
                        pen = alpha * _penalty_step(np.float64(sizes[c]), power)
                        if gmax - pen <= best_val:
                            continue  # cannot win: val <= gmax - pen <= best_val
                        gain = w * math.log(partial + sc)
                        gmax = gain
                        if gain - bound_pen <= best_val:
                            break  # later slots have smaller scores: none can win
                        if _taken(cur, v, j, c):
                            continue
                        val = gain - pen
                        if val > best_val:
                            best, best_val, best_s = c, val, sc
                    # previous paths outside the row, at its floor: one gain for all of them
                    fl = floor[v] if explore else 0.0
                    gain_fl = w * math.log(partial + fl) if fl > 0.0 else -np.inf
                    if gain_fl - bound_pen > best_val:
                        for i in range(J):
                            if not outside[v, i]:
                                continue  # invalid, or in the row: scanned with its own score
                            c = prev[v, i]
                            if _taken(cur, v, j, c):
                                continue
                            val = gain_fl - alpha * _penalty_step(np.float64(sizes[c]), power)
                            if val > best_val:
                                best, best_val, best_s = c, val, fl
                if best < 0:  # no candidate left: previous paths, then reserve
                    for i in range(2 * J):
                        if i < J:
                            c = prev[v, i]
                        elif reserve_row[v] >= 0:
                            c = reserve[reserve_row[v], i - J]
                        else:
                            break
                        if c >= 0 and not _taken(cur, v, j, c):
                            best = c
                            break
                    if best < 0:
                        raise ValueError("coordinate descent: no path left to fill a slot")
                cur[v, j] = best
                partial += best_s
                sizes[best] += 1
    return cur


def coordinate_descent(
    table: ScoreTable,
    N_v: np.ndarray,
    prev: np.ndarray,
    J: int,
    alpha: float,
    penalty_power: float,
    T: int,
    rng: np.random.Generator,
    *,
    n_paths: int | None = None,
    explore: bool = False,
) -> np.ndarray:
    """Algorithm 2 of the paper as printed in SPEC 5, exact and sequential (numba).

    ``table`` (V, S) candidates per item, ``N_v`` (V,) occurrences, ``prev`` (V, J) the
    current assignment (flat ids). Returns the new (V, J) int64 assignment.

    Sizes start at 0. For t = 1..T, items in order 0..V-1, for j = 1..J: if t > 1 the
    item leaves its path j of iteration t-1; then path j is the candidate c not
    already chosen at this t maximising
    ``N_v * log(partial + s[v, c]) - alpha * (f(|c| + 1) - f(|c|))``, f(x) = x^p / p
    (the constant -log(partial) dropped; ties go to the earlier slot, i.e. the higher
    score); then ``partial += s[v, c]`` and ``|c| += 1``. Slots with path -1 or score
    <= 0 are never candidates.

    Edge cases: an item with ``N_v <= 0`` or no candidates keeps ``prev``; an item with
    fewer than J usable candidates fills its remaining slots with its ``prev`` paths not
    already chosen, in order. Either way the kept/filled paths go through the same
    leave/join bookkeeping when the item is visited, so every item counts exactly once
    per path in the sizes seen by later items (from its visit in iteration 1 onwards).
    Rows of ``prev`` without J distinct valid (>= 0) paths get J random distinct paths
    from ``rng`` as a last resort after their valid ones; this needs ``n_paths``.

    ``explore=True`` (our addition, ``em.explore``): an item's previous paths that are not
    in its row are candidates too, at the row's lowest positive score (the floor the
    streaming update gives a path it has not seen, SPEC 5). Without it an item can only
    move to paths its users' beams reach; when early beams are alike for every user, all
    items share the same few candidates and the penalty has nowhere to send them (at
    10^5 synthetic items: ~16 paths of ~19,000 items each). With it, a crowded candidate
    loses to the item's current path once its penalty outweighs the score gap. Ties go
    to the row's own candidates.

    Sizes are indexed by the path id itself when every id in play is < 2^25, else by
    its rank among the ids in play (np.unique); the result is the same. The scan over a
    row stops once ``N_v * log(partial + s) - alpha * f'(0)`` cannot beat the best
    value (rows are sorted by score), and skips the log of a slot whose penalty alone
    rules it out against the gain of an earlier slot (an upper bound, as rows are
    sorted); neither changes a choice. Profiled at V = 10^6, S = 50 (benchmarks/
    README.md): the kernel is ~95% of the time, ~35 of the 50 slots are scanned per
    choice when popular paths crowd a row, and only ~6 of those need a log.
    """
    paths = np.ascontiguousarray(table.paths, dtype=np.int64)
    scores = np.ascontiguousarray(table.scores, dtype=np.float32)
    V, _ = paths.shape
    prev = np.ascontiguousarray(prev, dtype=np.int64)
    nv = np.ascontiguousarray(N_v, dtype=np.float64)
    if prev.shape != (V, J) or nv.shape != (V,):
        raise ValueError(f"need prev (V, J) = ({V}, {J}) and N_v ({V},); "
                         f"got {prev.shape}, {nv.shape}")
    if V == 0:
        return prev.copy()
    if T < 1 or J < 1:
        raise ValueError(f"need T >= 1 and J >= 1, got T={T}, J={J}")
    if min(int(paths.min(initial=0)), int(prev.min())) < -1:
        raise ValueError("path ids must be >= 0 (or -1 for an empty slot)")
    bad = _first_unsorted_row(scores)
    if bad >= 0:
        raise ValueError(f"score table row {bad} is not sorted by score descending")
    # rows of prev without J distinct valid paths get a random reserve
    sp = np.sort(prev, axis=1)
    n_distinct = (sp >= 0).sum(axis=1) - ((sp[:, 1:] == sp[:, :-1]) & (sp[:, 1:] >= 0)).sum(1)
    need = np.flatnonzero(n_distinct < J)
    reserve_row = np.full(V, -1, dtype=np.int64)
    reserve = np.zeros((0, J), dtype=np.int64)
    if len(need):
        if n_paths is None:
            raise ValueError("prev has rows without J distinct paths: pass n_paths")
        reserve = random_assignment(len(need), J, n_paths, rng)
        reserve_row[need] = np.arange(len(need))
    hi = max(int(paths.max(initial=-1)), int(prev.max()), int(reserve.max(initial=-1))) + 1
    ids = None
    if hi > _DENSE_LIMIT:  # map ids to dense slots 0..n-1 (-1 stays -1)
        ids, inv = np.unique(
            np.concatenate([paths.reshape(-1), prev.reshape(-1), reserve.reshape(-1)]),
            return_inverse=True,
        )
        if ids[0] < 0:
            ids, inv = ids[1:], inv - 1
        n1, n2 = paths.size, prev.size
        paths = inv[:n1].reshape(paths.shape)
        prev = inv[n1 : n1 + n2].reshape(prev.shape)
        reserve = inv[n1 + n2 :].reshape(reserve.shape)
        hi = len(ids)
    sizes = np.zeros(max(hi, 1), dtype=np.int32 if V * J < 2**31 else np.int64)
    out = _cd_kernel(
        paths, scores, nv, prev, reserve, reserve_row,
        J, float(alpha), float(penalty_power), T, sizes, bool(explore),
    )
    return out if ids is None else ids[out]


def penalised_objective(
    table: ScoreTable, N_v: np.ndarray, assignment: np.ndarray, alpha: float, p: float
) -> float:
    """Q_pen's M-step surrogate of an assignment (V, J), vectorised::

        sum_v N_v * log(sum_j s[v, pi_j(v)]) - alpha * sum_c f(|c|),  f(x) = x^p / p

    s[v, c] is the table's score (0 for a path not in v's row); |c| counts the
    assignment's items on c exactly. An item whose score sum is 0 (no scores, or
    assigned only outside its candidates) contributes 0 to the first term instead of
    -inf (or nan when N_v = 0).
    """
    a = np.asarray(assignment, dtype=np.int64)
    nv = np.asarray(N_v, dtype=np.float64)
    first = 0.0
    for lo in range(0, len(a), _BLOCK):
        r = slice(lo, lo + _BLOCK)
        match = (table.paths[r][:, None, :] == a[r][:, :, None]) & (a[r][:, :, None] >= 0)
        ssum = (match * table.scores[r][:, None, :].astype(np.float64)).sum(axis=(1, 2))
        pos = ssum > 0
        first += float((nv[r][pos] * np.log(ssum[pos])).sum())
    _, counts = np.unique(a[a >= 0], return_counts=True)
    return first - alpha * float((counts.astype(np.float64) ** p / p).sum())
