"""Users searched one by one through single.py's kernels (``Retriever.search`` with n <=
``ONE_BY_ONE``, or path-major) against the batched numpy path of the same Retriever
(``use_kernels = False``), and the kernels' top-k rule."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_retrieval.config import StructureConfig
from deep_retrieval.fast import Retriever
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.paths import PathIndex
from deep_retrieval.single import _top_sorted, beam_one
from deep_retrieval.structure import StructureModel, to_flat
from tests.test_contract import synthetic_dataset
from tests.test_fast import same_up_to_ties
from tests.test_model import quiet, tiny_config


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([-np.inf, -1.5, 0.0, 0.25, 2.0, 7.0]), max_size=40), st.integers(-1, 45))
def test_top_sorted_is_a_stable_descending_sort_cut_at_k(values, k):
    x = np.array(values, dtype=np.float32)
    want = np.lexsort((np.arange(len(x)), -x))[: max(min(k, len(x)), 0)]  # by score, then position
    np.testing.assert_array_equal(_top_sorted(x, k), want)


def random_retriever(K, D, hidden, V=60, e=8, seed=0, empty_share=0.3, path_major=False):
    """A random structure model and a random J = 2 assignment, some items on no path."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = StructureModel(StructureConfig(K=K, D=D, J=2, hidden=hidden), e).eval()
    a = rng.integers(0, K**D, size=(V, 2))
    a[rng.random((V, 2)) < empty_share] = -1
    emb = rng.standard_normal((V, e)).astype(np.float32)
    return Retriever.from_parts(model, PathIndex(a), emb, path_major=path_major), rng


SHAPES = [(3, 1, (8,)), (4, 3, ()), (5, 2, (8, 6)), (3, 4, (8,)), (10, 3, (16,))]


@pytest.mark.parametrize("K, D, hidden", SHAPES)
@pytest.mark.parametrize("B", [1, 2, 7, 200])
def test_one_user_equals_the_batched_path(K, D, hidden, B):
    r, rng = random_retriever(K, D, hidden)
    e, V = r.item_emb.shape[1], r.item_emb.shape[0]
    U = rng.standard_normal((6, e)).astype(np.float32)
    R = rng.standard_normal((6, e)).astype(np.float32)
    drop = [rng.choice(V, size=rng.integers(0, 10), replace=False) for _ in range(6)]
    exclude = rng.choice(V, size=5, replace=False)
    allow = rng.choice(V, size=40, replace=False)

    def extra(users, cands):  # a per-(user, item) term, the same on both paths
        return 0.01 * (cands.values % 7) + 0.1 * np.repeat(users, cands.lengths)

    numpy_path = copy.copy(r)  # the same arrays, its own scratch
    numpy_path.use_kernels = False
    for kw in [{}, {"drop": drop}, {"exclude": exclude}, {"allow": allow},
               {"drop": drop, "exclude": exclude, "allow": allow, "extra": extra}]:
        want_ids, want_s, want_n = numpy_path.search(U, R, 9, B, **kw)  # (6, 9): the numpy path
        block = r.search(U, R, 9, B, **kw)  # 6 <= ONE_BY_ONE users: one by one through the kernels
        np.testing.assert_array_equal(block[2], want_n)
        same_up_to_ties(block[0], block[1], want_ids, want_s)
        for u in range(6):
            one = {k: ([v[u]] if k == "drop" else v) for k, v in kw.items()}
            if "extra" in kw:  # the term sees the user's position among the n
                one["extra"] = lambda users, cands, u=u: extra(users + u, cands)
            ids, s, n = r.search(U[u : u + 1], R[u : u + 1], 9, B, **one)
            assert ids.shape == (1, 9) and s.dtype == np.float32 and ids.dtype == np.int64
            assert n[0] == want_n[u]
            same_up_to_ties(ids, s, want_ids[u : u + 1], want_s[u : u + 1])


def test_one_user_paths_equal_the_numpy_beam():
    r, rng = random_retriever(10, 3, (16,))
    tables, mlp = r._tables_stacked, r._mlp
    for _ in range(5):
        u = rng.standard_normal(8).astype(np.float32)
        paths, cum = r.beam(u[None], 30)  # (1, 30, 3)
        flat, got = beam_one(u, 30, r.K, r.D, r.w_user, r.b_user, tables, mlp)
        same_up_to_ties(flat[None], got[None], to_flat(paths, 10), cum)


def test_no_paths_and_no_candidates_pad():
    r, rng = random_retriever(3, 2, (8,), empty_share=1.0)  # every item on no path
    ids, s, n = r.search(np.ones((1, 8), np.float32), np.ones((1, 8), np.float32), 4, 5)
    assert n.tolist() == [0] and (ids == -1).all() and np.isneginf(s).all()
    r, rng = random_retriever(3, 2, (8,))
    ids, s, n = r.search(np.ones((1, 8), np.float32), np.ones((1, 8), np.float32), 4, 9,
                         allow=np.array([], dtype=np.int64))
    assert n.tolist() == [0] and (ids == -1).all()
    with pytest.raises(ValueError, match="beam size"):
        r.search(np.ones((1, 8), np.float32), np.ones((1, 8), np.float32), 4, 0)


def test_the_scratch_array_is_left_clean():
    """The (V,) mark array of a thread is all False between calls (else items would vanish)."""
    r, rng = random_retriever(4, 3, (8,))
    U = rng.standard_normal((1, 8)).astype(np.float32)
    first = r.search(U, U, 60, 64)
    assert not r._local.mark.any()
    again = r.search(U, U, 60, 64, exclude=np.arange(5))
    assert not r._local.mark.any()
    np.testing.assert_array_equal(r.search(U, U, 60, 64)[0], first[0])
    assert set(again[0][0][again[0][0] >= 0]) == set(first[0][0][first[0][0] >= 5])


def test_one_user_equals_the_numpy_path_on_a_trained_model():
    """A fitted model's test users, history dropped: kernels against the numpy code at n = 1."""
    ds = synthetic_dataset(seed=5)
    cfg = tiny_config(structure__K=4, structure__D=3, structure__hidden=(16, 12), beam__B=5,
                      train__epochs_dr=0, train__threads=1)
    m = DeepRetrieval(cfg).fit(ds, log=quiet)
    hist = ds.test.hist
    u_str, u_rr = m.user_embeddings(hist, "str"), m.user_embeddings(hist, "rr")
    fast = m.retriever()
    slow = Retriever.from_model(m)
    slow.use_kernels = False
    for B in (1, 5, 64):
        for u in range(len(hist)):
            args = (u_str[u : u + 1], u_rr[u : u + 1], 7, B)
            want = slow.search(*args, drop=[hist[u]])
            got = fast.search(*args, drop=[hist[u]])
            assert got[2][0] == want[2][0]
            same_up_to_ties(got[0], got[1], want[0], want[1])


def test_drop_may_repeat_items_and_come_unsorted():
    r, rng = random_retriever(4, 3, (8,))
    U = rng.standard_normal((1, 8)).astype(np.float32)
    drop = rng.choice(60, size=12, replace=False)
    want = r.search(U, U, 20, 64, drop=[np.sort(drop)])
    got = r.search(U, U, 20, 64, drop=[np.concatenate([drop[::-1], drop[:5]])])
    np.testing.assert_array_equal(got[0], want[0])
    assert got[2][0] == want[2][0] and not r._local.mark.any()


@pytest.mark.parametrize("K, D, hidden", SHAPES[:3])
def test_path_major_serves_the_same_answers(K, D, hidden, tmp_path):
    """With the path-major copy every user goes through the kernels, reading its embeddings by
    slot: the same answers as the item table's batched numpy path, with every filter and a term."""
    r, rng = random_retriever(K, D, hidden)
    r.use_kernels = False  # the oracle: the item table through the numpy path
    pm, _ = random_retriever(K, D, hidden, path_major=True)
    assert r.slot_emb is None and pm.slot_emb.shape == (len(pm.items), pm.item_emb.shape[1])
    np.testing.assert_array_equal(pm.slot_emb, pm.item_emb[pm.items])
    e, V = r.item_emb.shape[1], r.item_emb.shape[0]
    U = rng.standard_normal((40, e)).astype(np.float32)
    drop = [rng.choice(V, size=rng.integers(0, 10), replace=False) for _ in range(40)]

    def extra(users, cands):
        return 0.01 * (cands.values % 7) + 0.1 * np.repeat(users, cands.lengths)

    for B in (1, 7, 200):
        for kw in [{}, {"drop": drop, "exclude": np.arange(5), "allow": np.arange(3, 50), "extra": extra}]:
            want = r.search(U, U, 9, B, chunk=16, **kw)
            got = pm.search(U, U, 9, B, chunk=16, **kw)
            np.testing.assert_array_equal(got[2], want[2])
            same_up_to_ties(got[0], got[1], want[0], want[1])
    pm.save(tmp_path / "r")
    back = Retriever.load(tmp_path / "r", mmap=True)
    assert back.slot_emb is not None
    np.testing.assert_array_equal(back.search(U, U, 9, 7)[0], pm.search(U, U, 9, 7)[0])
    r.save(tmp_path / "plain")
    assert Retriever.load(tmp_path / "plain").slot_emb is None


def test_a_model_configured_path_major_recommends_the_same():
    ds = synthetic_dataset(seed=5)
    cfg = tiny_config(structure__K=4, structure__D=3, beam__B=5, train__epochs_dr=0, train__threads=1)
    m = DeepRetrieval(cfg).fit(ds, log=quiet)
    hist = ds.test.hist
    want = m.recommend(hist, 7, exclude_history=True)
    m.config.beam.path_major = True
    m.invalidate()
    assert m.retriever().slot_emb is not None
    got = m.recommend(hist, 7, exclude_history=True)
    same_up_to_ties(got[0], got[1], want[0], want[1])
    one = m.recommend(hist.take(np.array([0])), 7, exclude_history=True)
    np.testing.assert_array_equal(one[0][0], got[0][0])
