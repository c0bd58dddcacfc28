import sys

import numpy as np
import pytest
import scipy.sparse as sp

from deep_retrieval.baselines import HNSW, BruteForce, ItemCF, Popularity, item_neighbours
from deep_retrieval.data.dataset import Ragged
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


def test_load_wrong_kind_is_a_dr_error(tmp_path):
    ds = synthetic_dataset()
    Popularity().fit(ds).save(tmp_path / "pop")
    with pytest.raises(DRError, match="popularity"):
        ItemCF.load(tmp_path / "pop")
    with pytest.raises(DRError, match="not found"):
        Popularity.load(tmp_path / "missing")
