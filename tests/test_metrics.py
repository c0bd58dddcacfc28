import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_retrieval.data.dataset import Ragged
from deep_retrieval.errors import DRError
from deep_retrieval.metrics import METRICS, compute, per_user

L2 = 1 / math.log2(3)  # discount of position 1 (0-based)


def one(recs, truth, M):
    """Per-user metrics of a single user as plain floats."""
    pu = per_user(np.array([recs], dtype=np.int64), Ragged.from_lists([truth]), M)
    return {m: float(pu[m][0]) for m in METRICS}


def test_precision_divides_by_M_not_by_number_returned():
    m = one([1, 2, -1], [2, 5], M=5)
    assert m["precision"] == pytest.approx(1 / 5)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * 0.2 * 0.5 / 0.7)
    assert m["ndcg"] == pytest.approx(L2 / (1 + L2))  # hit at position 1, |G| = 2
    assert m["hit"] == 1.0


def test_fewer_columns_than_M():
    m = one([7, 8], [7], M=10)
    assert m["precision"] == pytest.approx(0.1)
    assert m["recall"] == 1.0
    assert m["ndcg"] == 1.0


def test_ndcg_ideal_over_min_truth_and_M_not_over_hits():
    # one hit at the top, 5 relevant items, M = 2: ideal has 2 hits -> 1 / (1 + 1/log2 3)
    m = one([3, 99], [3, 4, 5, 6, 7], M=2)
    assert m["ndcg"] == pytest.approx(1 / (1 + L2))
    # the same hit with M = 10: ideal over 5 hits
    m = one([3, 99], [3, 4, 5, 6, 7], M=10)
    assert m["ndcg"] == pytest.approx(1 / sum(1 / math.log2(j + 2) for j in range(5)))


def test_duplicates_count_once():
    m = one([3, 3, 3], [3], M=3)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == 1.0
    assert m["ndcg"] == 1.0
    # duplicates in the truth too: G = {3, 4}
    m = one([3, 4, 3, 4], [3, 3, 4], M=4)
    assert m["recall"] == 1.0
    assert m["precision"] == 0.5
    assert m["ndcg"] == pytest.approx(1.0)


def test_no_hit_gives_zero_f1():
    m = one([1, 2], [3], M=2)
    assert m == {"precision": 0, "recall": 0, "f1": 0, "ndcg": 0, "hit": 0}


def test_only_first_M_count():
    m = one([1, 2, 3], [3], M=2)
    assert m["hit"] == 0.0


def test_empty_truth_skipped_and_counted():
    recs = np.array([[1, 2], [1, 2], [5, 6]])
    truth = Ragged.from_lists([[1], [], [9, 6]])
    pu = per_user(recs, truth, 2)
    assert np.isnan(pu["recall"][1]) and list(pu["valid"]) == [True, False, True]
    out = compute(recs, truth, [1, 2])
    assert out[2]["n_users"] == 2 and out[2]["n_skipped"] == 1
    assert out[2]["recall"] == pytest.approx((1 + 0.5) / 2)
    assert out[1]["recall"] == pytest.approx(1 / 2)  # M = 1: only user 0 hits
    assert out[1]["precision"] == pytest.approx(1 / 2)


def test_accepts_list_truth_and_checks_shapes():
    out = compute(np.array([[1, 2]]), [[2]], [2])
    assert out[2]["recall"] == 1.0
    with pytest.raises(DRError):
        per_user(np.array([[1, 2]]), [[2], [3]], 2)
    with pytest.raises(DRError):
        compute(np.array([[1]]), [[1]], [])


def reference(rec_row, truth_row, M):
    """Direct per-user definition (None for empty truth)."""
    G = set(truth_row)
    if not G:
        return None
    seen, hits, dcg = set(), 0, 0.0
    for j, x in enumerate(rec_row[:M]):
        if x < 0 or x in seen:
            continue
        seen.add(x)
        if x in G:
            hits += 1
            dcg += 1 / math.log2(j + 2)
    p, r = hits / M, hits / len(G)
    idcg = sum(1 / math.log2(j + 2) for j in range(min(len(G), M)))
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f, "ndcg": dcg / idcg, "hit": float(hits > 0)}


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.lists(st.lists(st.integers(-1, 12), min_size=4, max_size=4), min_size=n, max_size=n),
            st.lists(st.lists(st.integers(0, 12), max_size=6), min_size=n, max_size=n),
        )
    ),
    st.integers(1, 7),
)
def test_matches_reference(data, M):
    recs, truth = data
    pu = per_user(np.array(recs, dtype=np.int64), Ragged.from_lists(truth), M)
    for u, (r, g) in enumerate(zip(recs, truth, strict=True)):
        ref = reference(r, g, M)
        if ref is None:
            assert not pu["valid"][u]
            continue
        for m in METRICS:
            assert pu[m][u] == pytest.approx(ref[m]), (m, r, g, M)
