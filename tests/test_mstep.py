import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from deep_retrieval import mstep
from deep_retrieval.mstep import (
    ScoreTable,
    collect_scores,
    coordinate_descent,
    merge_sum,
    penalised_objective,
    streaming_update,
)


# ------------------------------------------------------------------------ helpers
def table_from_rows(rows, S):
    """rows: list of {path: score}; ranked score desc (float32), path asc."""
    t = ScoreTable.empty(len(rows), S)
    for v, row in enumerate(rows):
        items = sorted(((np.float32(s), c) for c, s in row.items()), key=lambda x: (-x[0], x[1]))
        for k, (s, c) in enumerate(items[:S]):
            t.paths[v, k], t.scores[v, k] = c, s
    return t


def rows_of(t):
    return [
        {int(c): float(s) for c, s in zip(p, sc, strict=True) if c >= 0}
        for p, sc in zip(t.paths, t.scores, strict=True)
    ]


def random_table(rng, V, S, n_paths, quantised=False):
    rows = []
    for _ in range(V):
        L = int(rng.integers(0, min(S, n_paths) + 1))
        cs = rng.choice(n_paths, size=L, replace=False)
        ss = rng.integers(1, 5, size=L) / 4 if quantised else rng.random(L) + 1e-3
        rows.append(dict(zip(cs.tolist(), ss.tolist(), strict=True)))
    return table_from_rows(rows, S)


def assert_tables_equal(a, b):
    np.testing.assert_array_equal(a.paths, b.paths)
    np.testing.assert_array_equal(a.scores, b.scores)


# ------------------------------------------------------------------ streaming update
def reference_streaming(old, new, eta, S):
    out = []
    for ro, rn in zip(rows_of(old), rows_of(new), strict=True):
        m = min(ro.values()) if ro else 0.0
        u = {}
        for c in set(ro) | set(rn):
            if c in ro and c in rn:
                u[c] = eta * ro[c] + rn[c]
            elif c in rn:
                u[c] = eta * m + rn[c]
            else:
                u[c] = eta * ro[c]
        out.append(u)
    return table_from_rows(out, S)


def test_streaming_update_figure2_cases():
    old = table_from_rows([{10: 0.75, 11: 0.5, 12: 0.25}], 3)  # min_score = 0.25
    new = table_from_rows([{12: 1.0, 13: 0.5, 14: 0.125}], 3)
    # 12 both: .5*.25+1 = 1.125; 13 new only: .5*.25+.5 = .625; 14: .125+.125 = .25
    # 10 recorded only: .5*.75 = .375; 11: .25
    got = streaming_update(old, new, 0.5)
    assert got.paths.tolist() == [[12, 13, 10]]
    assert got.scores.tolist() == [[1.125, 0.625, 0.375]]
    got5 = streaming_update(old, new, 0.5, S=5)
    assert got5.paths.tolist() == [[12, 13, 10, 11, 14]]  # tie 0.25: path order
    assert got5.scores.tolist() == [[1.125, 0.625, 0.375, 0.25, 0.25]]


def test_streaming_update_paper_eta_and_edge_items():
    eta = 0.999
    old = table_from_rows([{1: 2.0, 2: 1.0}, {}, {5: 3.0, 6: 0.5}], 3)
    new = table_from_rows([{2: 1.0, 3: 0.5}, {7: 0.3, 8: 0.2}, {}], 3)
    got = rows_of(streaming_update(old, new, eta))
    # item 0: recorded list shorter than S, min over its 2 entries = 1.0
    assert got[0] == pytest.approx({1: eta * 2.0, 2: eta * 1.0 + 1.0, 3: eta * 1.0 + 0.5})
    assert got[1] == pytest.approx({7: 0.3, 8: 0.2})  # no record: new list as is
    assert got[2] == pytest.approx({5: eta * 3.0, 6: eta * 0.5})  # no new list: decay


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    V=st.integers(1, 12),
    S=st.integers(1, 6),
    n_paths=st.integers(1, 12),
    eta=st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0]),
    quantised=st.booleans(),
)
def test_streaming_update_matches_reference(seed, V, S, n_paths, eta, quantised):
    rng = np.random.default_rng(seed)
    old = random_table(rng, V, S, n_paths, quantised)
    new = random_table(rng, V, S, n_paths, quantised)
    assert_tables_equal(streaming_update(old, new, eta), reference_streaming(old, new, eta, S))


# ------------------------------------------------------------------ collecting scores
def reference_collect(targets, paths, probs, V, S):
    acc = [{} for _ in range(V)]
    for v, ps, qs in zip(targets, paths, probs, strict=True):
        for c, q in zip(ps, qs, strict=True):
            if c >= 0 and q > 0:
                acc[v][int(c)] = acc[v].get(int(c), 0.0) + float(q)
    return table_from_rows(acc, S)


@pytest.mark.parametrize("seed", range(4))
def test_collect_scores_equals_dictionary_reference(seed):
    rng = np.random.default_rng(seed)
    V, N, Sp, S = 30, 400, 6, 4
    targets = rng.integers(0, V, N)
    paths = rng.integers(-1, 25, (N, Sp))
    probs = rng.integers(0, 64, (N, Sp)) / 64  # exact sums in any order; some 0
    got = collect_scores(targets, paths, probs, V, S)
    assert_tables_equal(got, reference_collect(targets, paths, probs, V, S))
    floats = rng.random((N, Sp)).astype(np.float32)
    got = collect_scores(targets, paths, floats, V, S)
    ref = reference_collect(targets, paths, floats, V, S)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-6)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    V=st.integers(1, 15),
    N=st.integers(0, 60),
    width=st.integers(1, 5),
    S=st.integers(1, 6),
    n_paths=st.integers(1, 10),
    big=st.booleans(),
    f32=st.booleans(),
)
def test_collect_scores_property(seed, V, N, width, S, n_paths, big, f32):
    """Exact sums (dyadic probabilities), repeated paths within a row, empty slots, zero
    probabilities, path ids beyond the dense limit, float32 or float64 input."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, N)
    paths = rng.integers(-1, n_paths, (N, width))
    if big:  # flat ids of a deep grid: mapped to ranks and back
        paths = np.where(paths >= 0, paths * 7_919_000_003 + 2**40, -1)
    probs = (rng.integers(0, 16, (N, width)) / 16).astype(np.float32 if f32 else np.float64)
    got = collect_scores(targets, paths, probs, V, S)
    assert_tables_equal(got, reference_collect(targets, paths, probs, V, S))


def test_collect_scores_orders_scores_of_any_magnitude():
    """Sums from 1e-30 to 1e30 (and a tie) rank by score descending, ties by path id."""
    targets = np.zeros(6, dtype=np.int64)
    paths = np.array([[4], [9], [2], [7], [5], [3]])
    probs = np.array([[1e-30], [1e30], [3.0], [3.0], [1e-3], [2.0**90]])
    got = collect_scores(targets, paths, probs, 1, 6)
    assert got.paths[0].tolist() == [9, 3, 2, 7, 5, 4]
    assert got.scores[0].tolist() == np.float32([1e30, 2.0**90, 3.0, 3.0, 1e-3, 1e-30]).tolist()


def test_merge_sum_of_chunks_equals_whole():
    rng = np.random.default_rng(5)
    V, N, Sp = 20, 300, 3
    targets = rng.integers(0, V, N)
    paths = rng.integers(0, 6, (N, Sp))  # at most 6 paths per item: S = 6 keeps them all
    probs = rng.integers(1, 64, (N, Sp)) / 64
    whole = collect_scores(targets, paths, probs, V, 6)
    a = collect_scores(targets[:100], paths[:100], probs[:100], V, 6)
    b = collect_scores(targets[100:], paths[100:], probs[100:], V, 6)
    assert_tables_equal(merge_sum(a, b), whole)


# ---------------------------------------------------------------- coordinate descent
def _df(x, p):  # the same formula as mstep._penalty_step
    if p == 4.0:
        return ((x + 1.5) * x + 1.0) * x + 0.25
    if p == 2.0:
        return x + 0.5
    return ((x + 1.0) ** p - x**p) / p


def coordinate_descent_reference(table, N_v, prev, J, alpha, p, T, on_item=None, explore=False):
    """Algorithm 2 as printed in SPEC 5, plain Python, full scans (prev complete).

    ``explore``: the item's previous paths missing from its row are appended to its
    candidates at the row's lowest positive score.
    """
    V, S = table.paths.shape
    sizes = {}
    cur = [list(map(int, r)) for r in prev]
    for t in range(T):
        for v in range(V):
            partial, new = 0.0, []
            cands = [
                (int(c), float(s))
                for c, s in zip(table.paths[v], table.scores[v], strict=True)
                if c >= 0 and s > 0
            ]
            if explore and cands:
                floor = cands[-1][1]
                cands += [(int(c), floor) for c in prev[v] if int(c) not in dict(cands)]
            for j in range(J):
                if t > 0:
                    sizes[cur[v][j]] -= 1
                best, best_val, best_s = None, -math.inf, 0.0
                if N_v[v] > 0:
                    for c, s in cands:
                        if c in new:
                            continue
                        val = float(N_v[v]) * math.log(partial + s) - alpha * _df(
                            float(sizes.get(c, 0)), p
                        )
                        if val > best_val:
                            best, best_val, best_s = c, val, s
                if best is None:
                    best = next(int(c) for c in prev[v] if c not in new)
                new.append(best)
                cur[v][j] = best
                partial += best_s
                sizes[best] = sizes.get(best, 0) + 1
            if on_item is not None:
                on_item(t, v, np.array(cur, dtype=np.int64))
    return np.array(cur, dtype=np.int64)


def random_instance(rng, V, S, n_paths, J, ties=False):
    table = random_table(rng, V, S, n_paths, quantised=ties)
    N_v = rng.integers(0, 5, V)
    prev = np.stack([rng.choice(n_paths, J, replace=False) for _ in range(V)])
    return table, N_v, prev


@pytest.mark.parametrize("seed", range(12))
def test_numba_equals_reference(seed):
    rng = np.random.default_rng(seed)
    J = 1 + seed % 3
    p = [4.0, 2.0, 3.0][seed % 3]
    alpha = [0.0, 0.01, 0.3, 5.0][seed % 4]
    table, N_v, prev = random_instance(rng, 25, 5, 10, J, ties=seed % 2 == 0)
    got = coordinate_descent(table, N_v, prev, J, alpha, p, 3, rng)
    ref = coordinate_descent_reference(table, N_v, prev, J, alpha, p, 3)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("seed", range(12))
def test_numba_equals_reference_with_explore(seed):
    rng = np.random.default_rng(100 + seed)
    J = 1 + seed % 3
    p = [4.0, 2.0, 3.0][seed % 3]
    alpha = [0.0, 0.01, 0.3, 5.0][seed % 4]
    table, N_v, prev = random_instance(rng, 25, 5, 10, J, ties=seed % 2 == 0)
    got = coordinate_descent(table, N_v, prev, J, alpha, p, 3, rng, explore=True)
    ref = coordinate_descent_reference(table, N_v, prev, J, alpha, p, 3, explore=True)
    np.testing.assert_array_equal(got, ref)


def test_explore_keeps_items_off_a_shared_crowded_path():
    """Every item's only candidate is path 0 (alike beams): Algorithm 2 as printed puts all
    of them there; with explore the penalty sends them back to their own paths."""
    V = 200
    table = ScoreTable(np.zeros((V, 1), dtype=np.int64), np.ones((V, 1), dtype=np.float32))
    N_v = np.ones(V)
    prev = np.arange(1, V + 1)[:, None]
    rng = np.random.default_rng(0)
    plain = coordinate_descent(table, N_v, prev, 1, 1e-3, 4.0, 3, rng)
    assert (plain == 0).all()
    got = coordinate_descent(table, N_v, prev, 1, 1e-3, 4.0, 3, rng, explore=True)
    # candidate and previous path score alike (the row's floor is its only score), so the
    # penalty decides: item 0 finds path 0 empty (a tie, which goes to the row), every
    # later item finds it taken and stays on its own empty path
    assert got[0, 0] == 0
    np.testing.assert_array_equal(got[1:], prev[1:])


def test_sparse_slot_mapping_gives_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    table, N_v, prev = random_instance(rng, 30, 5, 12, 2)
    dense = coordinate_descent(table, N_v, prev, 2, 0.2, 4.0, 3, rng)
    monkeypatch.setattr(mstep, "_DENSE_LIMIT", 0)
    np.testing.assert_array_equal(coordinate_descent(table, N_v, prev, 2, 0.2, 4.0, 3, rng), dense)
    big = 10**12  # far ids force the np.unique mapping for real
    t2 = ScoreTable(np.where(table.paths >= 0, table.paths + big, -1), table.scores)
    np.testing.assert_array_equal(
        coordinate_descent(t2, N_v, prev + big, 2, 0.2, 4.0, 3, rng), dense + big
    )


def test_j1_alpha0_is_argmax():
    rng = np.random.default_rng(0)
    table = random_table(rng, 50, 6, 40)
    N_v = np.ones(50, dtype=np.int64)
    has = table.paths[:, 0] >= 0
    prev = rng.integers(0, 40, (50, 1))
    got = coordinate_descent(table, N_v, prev, 1, 0.0, 4.0, 3, rng)
    np.testing.assert_array_equal(got[has, 0], table.paths[has, 0])
    np.testing.assert_array_equal(got[~has], prev[~has])


@pytest.mark.parametrize("seed", range(5))
def test_j1_item_updates_never_lower_the_objective(seed):
    rng = np.random.default_rng(seed)
    table, N_v, prev = random_instance(rng, 20, 4, 6, 1)
    alpha, p = 0.5, 4.0
    seen = {"last": None}

    def check(t, v, assignment):
        obj = penalised_objective(table, N_v, assignment, alpha, p)
        if t > 0:  # from t = 2 every item is assigned and counted once
            assert obj >= seen["last"] - 1e-9
        seen["last"] = obj

    coordinate_descent_reference(table, N_v, prev, 1, alpha, p, 4, on_item=check)


def _brute_force(table, N_v, alpha, p):
    V = table.V
    options = [[int(c) for c in table.paths[v] if c >= 0] for v in range(V)]
    best = -math.inf
    for combo in itertools.product(*options):
        a = np.array(combo, dtype=np.int64)[:, None]
        best = max(best, penalised_objective(table, N_v, a, alpha, p))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_tiny_instances_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    V, n_paths = 4, 4
    rows = [
        dict(zip(rng.choice(n_paths, 3, replace=False).tolist(), (rng.random(3) + 0.1).tolist(),
                 strict=True))
        for _ in range(V)
    ]
    table = table_from_rows(rows, 3)
    N_v = rng.integers(1, 4, V)
    prev = table.paths[:, :1].copy()
    got = coordinate_descent(table, N_v, prev, 1, 0.0, 4.0, 3, rng)
    assert penalised_objective(table, N_v, got, 0.0, 4.0) == pytest.approx(
        _brute_force(table, N_v, 0.0, 4.0)
    )
    alpha = 0.2  # penalty comparable to the log scores
    got = coordinate_descent(table, N_v, prev, 1, alpha, 4.0, 20, rng)
    obj = penalised_objective(table, N_v, got, alpha, 4.0)
    best = _brute_force(table, N_v, alpha, 4.0)
    assert obj <= best + 1e-9
    print(f"seed {seed}: CD {obj:.4f}, optimum {best:.4f}, gap {best - obj:.4f}")
    for v in range(V):  # a local optimum: no single-item move improves
        for c in table.paths[v]:
            moved = got.copy()
            moved[v, 0] = c
            assert penalised_objective(table, N_v, moved, alpha, 4.0) <= obj + 1e-9


@pytest.mark.parametrize("J", [1, 2])
def test_large_alpha_spreads_items_evenly(J):
    V, P = 103, 10
    t = ScoreTable(np.tile(np.arange(P), (V, 1)), np.ones((V, P), dtype=np.float32))
    prev = np.tile(np.arange(J), (V, 1))
    got = coordinate_descent(t, np.ones(V), prev, J, 1e6, 4.0, 3, np.random.default_rng(0))
    sizes = np.bincount(got.ravel(), minlength=P)
    assert sizes.max() <= math.ceil(V * J / P) + 1
    assert sizes.sum() == V * J


def test_distinct_paths_keep_and_fill_rules():
    S, J = 4, 3
    paths = np.full((4, S), -1)
    scores = np.zeros((4, S), dtype=np.float32)
    paths[0, :2], scores[0, :2] = [7, 8], [0.5, 0.25]  # N_v = 0: keeps prev
    paths[2, :1], scores[2, :1] = [5], [1.0]  # 1 candidate = prev[2][0]
    paths[3, :1], scores[3, :1] = [9], [1.0]  # 1 candidate not in prev
    table = ScoreTable(paths, scores)
    N_v = np.array([0, 3, 2, 2])
    prev = np.array([[1, 2, 3], [4, 5, 6], [5, 1, 2], [3, 4, 6]])
    got = coordinate_descent(table, N_v, prev, J, 0.1, 4.0, 3, np.random.default_rng(0))
    assert got.tolist() == [[1, 2, 3], [4, 5, 6], [5, 1, 2], [9, 3, 4]]


def test_always_j_distinct_paths_and_reserve_fill():
    rng = np.random.default_rng(4)
    table, N_v, prev = random_instance(rng, 200, 4, 8, 3)
    prev[:20, 1:] = -1  # rows with one valid previous path
    prev[20:25] = -1
    with pytest.raises(ValueError, match="n_paths"):
        coordinate_descent(table, N_v, prev, 3, 0.1, 4.0, 3, rng)
    got = coordinate_descent(table, N_v, prev, 3, 0.1, 4.0, 3, rng, n_paths=8)
    s = np.sort(got, axis=1)
    assert got.min() >= 0 and got.max() < 8 and not (s[:, 1:] == s[:, :-1]).any()
    usable = (table.paths >= 0).sum(1) > 0
    keep = (N_v == 0) | ~usable
    rows = np.flatnonzero(keep[:20])
    np.testing.assert_array_equal(got[rows, 0], prev[rows, 0])  # valid prev comes first


def test_rejects_unsorted_rows():
    t = ScoreTable(np.array([[1, 2]]), np.array([[0.1, 0.5]], dtype=np.float32))
    with pytest.raises(ValueError, match="sorted"):
        coordinate_descent(t, np.ones(1), np.array([[1]]), 1, 0.0, 4.0, 1, None)


def test_penalised_objective_hand_case():
    t = ScoreTable(np.array([[1, 2], [2, -1], [3, -1]]),
                   np.array([[0.5, 0.25], [2.0, 0], [1.0, 0]], dtype=np.float32))
    a = np.array([[1, 2], [2, 4], [4, 5]])  # item 2 has score sum 0: contributes 0
    N_v = np.array([2, 3, 7])
    # sizes: 1->1, 2->2, 4->2, 5->1; f = x^4 / 4
    expect = 2 * math.log(0.75) + 3 * math.log(2.0) - 0.1 * (1 + 16 + 16 + 1) / 4
    assert penalised_objective(t, N_v, a, 0.1, 4.0) == pytest.approx(expect)


# The numba kernel as it was before the log-skip and int32 sizes (frozen copy): the
# faster kernel must give the same assignment, choice for choice.
@njit(cache=False)
def _cd_kernel_v1(cand, score, nv, prev, reserve, reserve_row, J, alpha, power, T, n_slots):
    V, S = cand.shape
    sizes = np.zeros(n_slots, dtype=np.int64)
    cur = np.empty((V, J), dtype=np.int64)
    bound_pen = alpha * mstep._penalty_step(0.0, power)
    for t in range(T):
        for v in range(V):
            w = nv[v]
            partial = 0.0
            for j in range(J):
                if t > 0:
                    sizes[cur[v, j]] -= 1
                best = -1
                best_val = -np.inf
                best_s = 0.0
                if w > 0:
                    for k in range(S):
                        sc = np.float64(score[v, k])
                        c = cand[v, k]
                        if c < 0 or not sc > 0.0:
                            break
                        gain = w * math.log(partial + sc)
                        if gain - bound_pen <= best_val:
                            break
                        taken = False
                        for i in range(j):
                            if cur[v, i] == c:
                                taken = True
                        if taken:
                            continue
                        val = gain - alpha * mstep._penalty_step(np.float64(sizes[c]), power)
                        if val > best_val:
                            best, best_val, best_s = c, val, sc
                if best < 0:
                    for i in range(2 * J):
                        if i < J:
                            c = prev[v, i]
                        elif reserve_row[v] >= 0:
                            c = reserve[reserve_row[v], i - J]
                        else:
                            break
                        if c < 0:
                            continue
                        taken = False
                        for i2 in range(j):
                            if cur[v, i2] == c:
                                taken = True
                        if not taken:
                            best = c
                            break
                    if best < 0:
                        raise ValueError("coordinate descent: no path left to fill a slot")
                cur[v, j] = best
                partial += best_s
                sizes[best] += 1
    return cur


def _skewed_table(rng, V, S, n_paths, ties):
    """Rows of S distinct paths around a Zipf-popular centre (crowded paths), sorted."""
    centre = np.minimum(rng.zipf(1.3, V) - 1, n_paths - 1)
    paths = (centre[:, None] + np.arange(S) * 7) % n_paths  # distinct while 7 * S <= n_paths
    if ties:
        scores = np.sort(rng.integers(1, 4, (V, S)) / 4, axis=1)[:, ::-1].astype(np.float32)
    else:
        scores = np.exp(-np.cumsum(rng.exponential(0.3, (V, S)), axis=1)).astype(np.float32)
    short = rng.random(V) < 0.2  # some rows shorter than S
    cut = rng.integers(0, S, V)
    empty = short[:, None] & (np.arange(S) >= cut[:, None])
    return ScoreTable(np.where(empty, -1, paths), np.where(empty, 0, scores).astype(np.float32))


@pytest.mark.parametrize("seed", range(8))
def test_kernel_equals_previous_kernel_on_random_data(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    V, S, n_paths = 20_000, [5, 25, 50][seed % 3], 400
    J = 1 + seed % 3
    p = [4.0, 2.0, 3.0, 4.0][seed % 4]
    alpha = [1e-9, 1e-6, 1e-4, 0.0][seed % 4]
    table = _skewed_table(rng, V, S, n_paths, ties=seed % 2 == 1)
    N_v = np.where(rng.random(V) < 0.05, 0, 1 + rng.pareto(1.2, V)).astype(np.int64)
    prev = np.stack([rng.choice(n_paths, J, replace=False) for _ in range(V)])
    got = coordinate_descent(table, N_v, prev, J, alpha, p, 3, rng)
    monkeypatch.setattr(mstep, "_cd_kernel", lambda *a: _cd_kernel_v1(*a[:-2], len(a[-2])))
    old = coordinate_descent(table, N_v, prev, J, alpha, p, 3, rng)
    np.testing.assert_array_equal(got, old)
    assert len(np.unique(got)) > 1


# The numpy row merge as it was before the numba kernel (frozen copy, whole table in one
# block): the kernel must give the same tables, bit for bit.
def _union_rows_v1(
    pa: np.ndarray, sa: np.ndarray, pb: np.ndarray, sb: np.ndarray,
    wa: float, fill: np.ndarray, S: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise union of two lists per row, the S best kept.

    For path c in row r of a (R, Sa) or b (R, Sb), the value is
    ``wa * (sa[r, c] if c in a[r] else fill[r]) + (sb[r, c] if c in b[r] else 0)``,
    computed in float64 and ranked as float32. Rows of a and of b hold distinct paths.
    """
    R, Sa = pa.shape
    W = Sa + pb.shape[1]
    big = np.iinfo(np.int64).max
    p = np.concatenate([pa, pb], axis=1)  # (R, W)
    x = np.concatenate([wa * sa.astype(np.float64), sb.astype(np.float64)], axis=1)  # (R, W)
    p = np.where(p >= 0, p, big)
    order = np.argsort(p, axis=1, kind="stable")  # by path; a's copy before b's
    p = np.take_along_axis(p, order, axis=1)
    x = np.take_along_axis(x, order, axis=1)
    from_a = order < Sa  # (R, W)
    valid = p != big
    second = np.zeros((R, W), dtype=bool)  # b's copy of a path also in a
    second[:, 1:] = (p[:, 1:] == p[:, :-1]) & valid[:, 1:]
    x[:, :-1] += np.where(second[:, 1:], x[:, 1:], 0.0)  # both: wa * s + s'
    only_b = valid & ~from_a & ~second
    x += np.where(only_b, wa * fill[:, None], 0.0)  # only in b: wa * fill + s'
    alive = valid & ~second
    x32 = np.where(alive, x, -np.inf).astype(np.float32)
    top = np.argsort(-x32, axis=1, kind="stable")[:, :S]  # ties keep path order
    p = np.take_along_axis(p, top, axis=1)
    x32 = np.take_along_axis(x32, top, axis=1)
    ok = np.take_along_axis(alive, top, axis=1)
    out_p = np.full((R, S), -1, dtype=np.int64)
    out_s = np.zeros((R, S), dtype=np.float32)
    w = top.shape[1]  # min(S, W)
    out_p[:, :w] = np.where(ok, p, -1)
    out_s[:, :w] = np.where(ok, x32, 0.0)
    return out_p, out_s


@pytest.mark.parametrize("seed", range(6))
def test_merge_kernel_equals_previous_numpy_merge(seed):
    rng = np.random.default_rng(seed)
    V, n_paths = 3000, [8, 60, 10**6][seed % 3]
    S = [3, 10, 25][seed % 3]
    ties = seed % 2 == 0
    old = random_table(rng, V, S, min(n_paths, 200), quantised=ties)
    new = random_table(rng, V, S + seed % 2, min(n_paths, 200), quantised=ties)
    if seed % 3 == 2:  # paths far apart, and empty / full rows on either side
        old.paths[old.paths >= 0] += n_paths
        new.paths[:500] = -1
        new.scores[:500] = 0
        old.paths[500:1000] = -1
        old.scores[500:1000] = 0
    for eta in (0.0, 0.999, 1.0, 0.3):
        rec = old.paths >= 0
        fill = np.where(rec, old.scores.astype(np.float64), np.inf).min(axis=1)
        fill[~rec.any(axis=1)] = 0.0
        for S_out in (S, 2 * S + 1, 1):
            p, s = _union_rows_v1(old.paths, old.scores, new.paths, new.scores, eta, fill, S_out)
            got = streaming_update(old, new, eta, S_out)
            np.testing.assert_array_equal(got.paths, p)
            np.testing.assert_array_equal(got.scores, s)
    p, s = _union_rows_v1(old.paths, old.scores, new.paths, new.scores, 1.0, np.zeros(V), S)
    got = merge_sum(old, new, S)
    np.testing.assert_array_equal(got.paths, p)
    np.testing.assert_array_equal(got.scores, s)
