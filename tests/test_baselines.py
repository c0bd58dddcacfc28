import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_retrieval.baselines import (
    ALS,
    EASE,
    HNSW,
    BruteForce,
    ItemCF,
    Popularity,
    RP3beta,
    _binary_matrix,
    ease_weights,
    item_neighbours,
)
from deep_retrieval.data.dataset import Dataset, Ragged, Split
from deep_retrieval.errors import DRError
from tests.test_contract import synthetic_dataset


def random_histories(rng, n, n_items, max_len=6):
    """n non-empty random histories (an empty one would give a zero query: all ties)."""
    return Ragged.from_lists([rng.integers(0, n_items, rng.integers(1, max_len)) for _ in range(n)])


# ------------------------------------------------------------------ brute force
def naive_topk(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("exclude", [False, True])
def test_brute_force_equals_naive_argsort(exclude):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    hist = random_histories(rng, 20, 300)
    users = np.stack([emb[hist[u]].mean(axis=0) for u in range(len(hist))])  # (n, e)
    full = users @ emb.T  # (n, V)
    if exclude:
        for u in range(len(hist)):
            full[u, hist[u]] = -np.inf
    rec = BruteForce(emb, batch_size=7)  # several torch chunks
    ids, scores = rec.recommend(hist, 10, exclude_history=exclude)
    np.testing.assert_array_equal(ids, naive_topk(full, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids, axis=1), rtol=1e-5)
    for u in range(3):  # batch size 1 takes the numpy path
        i1, s1 = rec.recommend(hist.take(np.array([u])), 10, exclude_history=exclude)
        np.testing.assert_array_equal(i1[0], ids[u])
        np.testing.assert_allclose(s1[0], scores[u], rtol=1e-5)


def test_brute_force_custom_encode_and_save_refused(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 4)).astype(np.float32)
    users = rng.normal(size=(3, 4)).astype(np.float32)
    rec = BruteForce(emb, encode=lambda h: users[: len(h)])
    ids, _ = rec.recommend([[1], [2], [3]], 5)
    np.testing.assert_array_equal(ids, naive_topk(users @ emb.T, 5))
    assert list(rec.last_items_scored) == [50, 50, 50]
    with pytest.raises(DRError, match="custom encode"):
        rec.save(tmp_path / "bf")
    with pytest.raises(DRError, match="outside"):
        rec.recommend([[50]], 5)


# ------------------------------------------------------------------ HNSW
def test_hnsw_recall_against_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(2000, 16)).astype(np.float32)
    rec = HNSW(emb, ef_search=400)
    hist = random_histories(rng, 50, 2000)
    assert rec.recall_against_exact(hist, 10) >= 0.9
    assert np.all(rec.last_items_scored > 0)


def test_hnsw_without_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    rec = HNSW(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(DRError, match=r"pip install 'deep-retrieval\[ann\]'"):
        rec.fit(None)


# ------------------------------------------------------------------ item-cf
def dense_neighbours(X: np.ndarray, n_neighbours: int) -> np.ndarray:
    """Reference: dense cosine X^T X / sqrt(n_i n_j), zero diagonal, top-N per row."""
    C = X.T @ X  # (V, V) co-occurrence
    norm = np.sqrt(np.diag(C))
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(C > 0, C / (norm[:, None] * norm[None, :]), 0.0).astype(np.float32)
    np.fill_diagonal(sim, 0)
    out = np.zeros_like(sim)
    for i in range(len(sim)):
        order = np.lexsort((np.arange(len(sim)), -sim[i]))[:n_neighbours]  # ties: lower j
        order = order[sim[i, order] > 0]
        out[i, order] = sim[i, order]
    return out


@pytest.mark.parametrize("n_neighbours", [3, 100])
def test_item_cf_equals_dense_reference(n_neighbours):
    ds = synthetic_dataset(seed=3, n_items=15, n_train=30)
    X = np.zeros((len(ds.train), ds.n_items))
    X[ds.train.row_ids(), ds.train.values] = 1
    ref = dense_neighbours(X, n_neighbours)
    rec = ItemCF(neighbours=n_neighbours).fit(ds)
    np.testing.assert_allclose(rec.sim.toarray(), ref, rtol=1e-6)
    # one block per item gives the same matrix
    W = item_neighbours(sp.csr_matrix(X), n_neighbours, block_work=1)
    np.testing.assert_array_equal(W.toarray(), rec.sim.toarray())

    hist = ds.test.hist
    ids, scores = rec.recommend(hist, 6)
    for u in range(len(hist)):
        s = ref[np.unique(hist[u])].sum(axis=0)  # history as a set
        valid = ids[u] >= 0
        assert valid.sum() == min(6, int((s > 0).sum()))
        np.testing.assert_allclose(scores[u, valid], s[ids[u, valid]], rtol=1e-5)
        np.testing.assert_allclose(scores[u, valid], np.sort(s)[::-1][: valid.sum()], rtol=1e-5)
    assert np.array_equal(rec.last_items_scored, (hist_scores(ref, hist) > 0).sum(axis=1))


def hist_scores(ref: np.ndarray, hist: Ragged) -> np.ndarray:
    return np.stack([ref[np.unique(hist[u])].sum(axis=0) for u in range(len(hist))])


def test_item_cf_repeated_history_counts_once():
    ds = synthetic_dataset(seed=4)
    rec = ItemCF(neighbours=20).fit(ds)
    a = rec.recommend([[1, 2]], 10)
    b = rec.recommend([[1, 2, 2, 1, 1]], 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------ popularity
def test_popularity_order_equals_counts():
    ds = synthetic_dataset(seed=5)
    counts = np.bincount(ds.train.values, minlength=ds.n_items)
    rec = Popularity().fit(ds)
    ids, scores = rec.recommend([[], [0]], ds.n_items)
    expected = np.argsort(-counts, kind="stable")
    np.testing.assert_array_equal(ids[0], expected)
    np.testing.assert_array_equal(scores[0], counts[expected].astype(np.float32))
    ids, _ = rec.recommend([[expected[0], expected[2]]], 3, exclude_history=True)
    np.testing.assert_array_equal(ids[0], expected[[1, 3, 4]])


def test_popularity_after_counts_positions_from_the_history_length_by_hand(tmp_path):
    # rows (positions 0, 1, 2, ...): [0, 1, 2], [1, 0], [3, 2, 2, 4]
    rows = Ragged.from_lists([[0, 1, 2], [1, 0], [3, 2, 2, 4]])
    split = Split(np.arange(1), Ragged.from_lists([[0]]), Ragged.from_lists([[1]]))
    ds = Dataset(item_ids=np.arange(5), user_ids=np.arange(3), train=rows, train_users=np.arange(3),
                 val=split, test=split)
    rec = Popularity(after=True).fit(ds)
    # counts at positions >= h, h = 0 (the plain counts) .. 4
    by_h = {0: [2, 2, 3, 1, 1], 1: [1, 1, 3, 0, 1], 2: [0, 0, 2, 0, 1], 3: [0, 0, 0, 0, 1],
            4: [0, 0, 0, 0, 0]}
    hists = [[], [4], [3, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    got = rec.score_items(hists, [list(range(5))] * len(hists))
    for u, h in enumerate(hists):
        np.testing.assert_array_equal(got.values[got.offsets[u]:got.offsets[u + 1]], by_h[min(len(h), 4)])
    ids, scores = rec.recommend(hists, 5)
    # ties: the higher plain count, then the lower index; plain counts (2, 2, 3, 1, 1)
    np.testing.assert_array_equal(ids, [[2, 0, 1, 3, 4], [2, 0, 1, 4, 3], [2, 4, 0, 1, 3],
                                        [4, 2, 0, 1, 3], [2, 0, 1, 3, 4], [2, 0, 1, 3, 4]])
    np.testing.assert_array_equal(scores[2], [2, 1, 0, 0, 0])
    ids, _ = rec.recommend([[4, 2]], 2, exclude_history=True)  # h = 2, items 4 and 2 masked
    np.testing.assert_array_equal(ids, [[0, 1]])
    rec.save(tmp_path / "after")
    back = Popularity.load(tmp_path / "after")
    assert back.after and back.stride == 4
    np.testing.assert_array_equal(back.recommend(hists, 5)[0], rec.recommend(hists, 5)[0])
    Popularity().fit(ds).save(tmp_path / "plain")
    assert not Popularity.load(tmp_path / "plain").after


def test_load_wrong_kind_is_a_dr_error(tmp_path):
    ds = synthetic_dataset()
    Popularity().fit(ds).save(tmp_path / "pop")
    with pytest.raises(DRError, match="popularity"):
        ItemCF.load(tmp_path / "pop")
    with pytest.raises(DRError, match="not found"):
        Popularity.load(tmp_path / "missing")


# ------------------------------------------------------------------ tiny hand-computed cases
# 4 users x 5 items; item 0: users {0, 1}, 1: {0, 2}, 2: {1, 2}, 3: {2, 3}, 4: {3}
TINY = np.array(
    [[1, 1, 0, 0, 0],
     [1, 0, 1, 0, 0],
     [0, 1, 1, 1, 0],
     [0, 0, 0, 1, 1]], dtype=np.float64)  # fmt: skip


def tiny_dataset(X: np.ndarray = TINY) -> Dataset:
    rows = Ragged.from_lists([np.flatnonzero(r) for r in X])
    hist = Ragged.from_lists([[0, 4], [2], []])
    split = Split(np.arange(3), hist, Ragged.from_lists([[1], [3], [0]]))
    n_train = len(X)
    return Dataset(
        item_ids=np.arange(X.shape[1]), user_ids=np.arange(n_train), train=rows,
        train_users=np.arange(n_train), val=split, test=split,
    )  # fmt: skip


def test_item_cf_shrink_by_hand():
    rec = ItemCF(neighbours=10, shrink=1.0).fit(tiny_dataset())
    W = rec.sim.toarray()
    # |U_i ∩ U_j| / (sqrt(n_i n_j) + 1); n = (2, 2, 2, 2, 1)
    assert W[0, 1] == pytest.approx(1 / 3) and W[1, 3] == pytest.approx(1 / 3)
    assert W[3, 4] == pytest.approx(1 / (np.sqrt(2) + 1)) and W[4, 3] == W[3, 4]
    assert W[0, 3] == 0 and W[0, 0] == 0
    assert np.count_nonzero(W) == 12  # 6 co-occurring pairs, both directions


def test_rp3beta_by_hand():
    # alpha 1, beta 0: W[i, j] = 1/n_i * sum over common users of 1/|I_u|; |I_u| = (2, 2, 3, 2)
    q, s = 1 / 4, 1 / 6
    expected = np.array(
        [[0, q, q, 0, 0],
         [q, 0, s, s, 0],
         [q, s, 0, s, 0],
         [0, s, s, 0, q],
         [0, 0, 0, 1 / 2, 0]])  # fmt: skip
    rec = RP3beta(alpha=1.0, beta=0.0, neighbours=10).fit(tiny_dataset())
    np.testing.assert_allclose(rec.sim.toarray(), expected, rtol=1e-6)
    ids, scores = rec.recommend([[0, 4]], 5)  # W[0] + W[4] = (0, 1/4, 1/4, 1/2, 0)
    np.testing.assert_array_equal(ids[0], [3, 1, 2, -1, -1])
    np.testing.assert_allclose(scores[0, :3], [1 / 2, 1 / 4, 1 / 4], rtol=1e-6)
    # two neighbours: row 1 keeps 1/4 (item 0) and, of the tie 1/6, the lower item 2
    W2 = RP3beta(alpha=1.0, beta=0.0, neighbours=2).fit(tiny_dataset()).sim.toarray()
    np.testing.assert_allclose(W2[1], [q, 0, s, 0, 0], rtol=1e-6)
    # beta divides by popularity^beta of the destination; normalize makes rows sum to one
    Wb = RP3beta(alpha=1.0, beta=0.5, neighbours=10, normalize=True).fit(tiny_dataset()).sim.toarray()
    ref = expected / np.array([2, 2, 2, 2, 1]) ** 0.5
    np.testing.assert_allclose(Wb, ref / ref.sum(axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.3), (0.8, 0.0), (1.3, 0.7)])
def test_rp3beta_equals_dense_random_walk(alpha, beta):
    ds = synthetic_dataset(seed=6, n_items=15, n_train=30)
    X = np.zeros((len(ds.train), ds.n_items))
    X[ds.train.row_ids(), ds.train.values] = 1
    P_ui = X / np.maximum(X.sum(1, keepdims=True), 1)  # user -> item
    P_iu = X.T / np.maximum(X.sum(0)[:, None], 1)  # item -> user
    pop = np.maximum(X.sum(0), 1)
    ref = (P_iu**alpha @ P_ui**alpha) / pop[None, :] ** beta
    np.fill_diagonal(ref, 0)
    W = RP3beta(alpha, beta, neighbours=100).fit(ds).sim.toarray()
    np.testing.assert_allclose(W, ref, rtol=1e-5)


def dense_ease(X: np.ndarray, l2: float) -> np.ndarray:
    P = np.linalg.inv(X.T @ X + l2 * np.eye(X.shape[1]))
    B = np.eye(X.shape[1]) - P / np.diag(P)[None, :]  # I - P diag(1 / diag(P))
    np.fill_diagonal(B, 0)
    return B


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ease_equals_dense_formula(dtype):
    for X, l2 in ((TINY, 1.0), (TINY, 30.0)):
        rec = EASE(l2=l2, dtype=dtype).fit(tiny_dataset(X))
        np.testing.assert_allclose(rec.B, dense_ease(X, l2), rtol=1e-4, atol=1e-6)
    ds = synthetic_dataset(seed=7, n_items=15, n_train=30)
    X = np.zeros((len(ds.train), ds.n_items))
    X[ds.train.row_ids(), ds.train.values] = 1
    rec = EASE(l2=5.0, dtype=dtype).fit(ds)
    B = dense_ease(X, 5.0)
    np.testing.assert_allclose(rec.B, B, rtol=1e-4, atol=1e-6)
    hist = ds.test.hist
    ids, scores = rec.recommend(hist, ds.n_items)
    for u in range(len(hist)):
        s = B[np.unique(hist[u])].sum(axis=0)
        np.testing.assert_allclose(scores[u], s[ids[u]], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores[u], np.sort(s)[::-1], rtol=1e-4, atol=1e-5)


def test_ease_block_symmetrisation_matches():
    ds = synthetic_dataset(seed=8, n_items=23, n_train=40)
    X = _binary(ds)
    np.testing.assert_allclose(ease_weights(X, 3.0, np.float64, block=4), dense_ease(X.toarray(), 3.0),
                               rtol=1e-9, atol=1e-12)


def _binary(ds):
    X = sp.csr_matrix((np.ones(len(ds.train.values)), (ds.train.row_ids(), ds.train.values)),
                      shape=(len(ds.train), ds.n_items))
    X.data[:] = 1
    return X


def test_ease_refuses_a_large_catalogue():
    with pytest.raises(DRError, match="max_items 4"):
        EASE(max_items=4).fit(tiny_dataset())
    with pytest.raises(DRError, match="l2 > 0"):
        EASE(l2=0)


def test_als_fold_in_equals_least_squares():
    pytest.importorskip("implicit")
    ds = synthetic_dataset(seed=9, n_items=20, n_train=50)
    rec = ALS(factors=6, regularization=0.1, alpha=3.0, iterations=5).fit(ds)
    Y = rec.exact.item_emb.astype(np.float64)  # (V, f)
    hist = ds.test.hist
    ids, scores = rec.recommend(hist, ds.n_items)
    for u in range(len(hist)):
        c = np.ones(ds.n_items)  # implicit's confidence: alpha on observed pairs, 1 elsewhere
        p = np.zeros(ds.n_items)
        c[hist[u]], p[hist[u]] = 3.0, 1.0
        x = np.linalg.solve(Y.T @ (c[:, None] * Y) + 0.1 * np.eye(6), Y.T @ (c * p))
        s = Y @ x
        np.testing.assert_allclose(scores[u], s[ids[u]], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(scores[u], np.sort(s)[::-1], rtol=1e-3, atol=1e-4)


def test_als_without_implicit_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "implicit", None)
    monkeypatch.setitem(sys.modules, "implicit.cpu.als", None)
    with pytest.raises(DRError, match=r"pip install 'deep-retrieval\[als\]'"):
        ALS().fit(tiny_dataset())


def test_score_items_rejects_bad_candidates():
    rec = RP3beta().fit(tiny_dataset())
    with pytest.raises(DRError, match="one row per user"):
        rec.score_items([[0], [1]], Ragged.from_lists([[1]]))
    with pytest.raises(DRError, match="outside"):
        rec.score_items([[0]], Ragged.from_lists([[5]]))
    with pytest.raises(DRError, match="cannot score a candidate subset"):
        HNSW(np.eye(3, dtype=np.float32)).score_items([[0]], Ragged.from_lists([[1]]))


def test_popularity_scores_candidates_by_count():
    rec = Popularity().fit(tiny_dataset())
    counts = TINY.sum(axis=0)  # (V,) training interactions per item
    out = rec.score_items([[0], [1, 2]], Ragged.from_lists([[2, 0], [1]]))
    np.testing.assert_array_equal(out.values, counts[[2, 0, 1]].astype(np.float32))
    np.testing.assert_array_equal(out.offsets, [0, 2, 3])
    np.testing.assert_array_equal(rec.last_items_scored, [2, 1])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_item_item_candidate_scores_equal_the_sparse_product(data):
    """score_items' kernel against (binary history @ sim)[u, c] built by scipy: bit for bit.

    Histories repeat items and may be empty; candidate rows repeat items and may be empty."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    V = data.draw(st.integers(1, 30))
    sim = sp.random(V, V, density=data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])), format="csr",
                    dtype=np.float32, random_state=rng)
    n = data.draw(st.integers(1, 6))
    hist = Ragged.from_lists([rng.integers(0, V, rng.integers(0, 8)) for _ in range(n)])
    items = Ragged.from_lists([rng.integers(0, V, rng.integers(0, 2 * V + 1)) for _ in range(n)])
    rec = ItemCF()
    rec.sim = sim
    got = rec.score_items(hist, items)
    S = (_binary_matrix(hist, V) @ sim).toarray()  # (n, V) scipy's sparse product
    np.testing.assert_array_equal(got.offsets, items.offsets)
    np.testing.assert_array_equal(got.values, S[items.row_ids(), items.values])
