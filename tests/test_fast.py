"""The numpy serving path (fast.Retriever, what a CPU model's ``recommend`` and the server use)
against the oracles: the torch beam_search and the torch path of retrieval.py (a GPU model's
``recommend`` and the training's validation)."""

import copy
import pickle

import numpy as np
import pytest
import torch

from deep_retrieval.beam import beam_search
from deep_retrieval.config import StructureConfig
from deep_retrieval.fast import Retriever
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.paths import PathIndex, random_assignment
from deep_retrieval.retrieval import recommend as torch_recommend
from deep_retrieval.structure import StructureModel, to_flat
from tests.test_contract import synthetic_dataset
from tests.test_model import quiet, tiny_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine spinning workers cost 10x here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=5)


@pytest.fixture(scope="module")
def model(data):
    cfg = tiny_config(structure__K=4, structure__D=3, structure__hidden=(16, 12), beam__B=5,
                      train__epochs_dr=0, train__threads=1)
    return DeepRetrieval(cfg).fit(data, log=quiet)


def torch_path(model, hist, k, B, exclude_history=False):
    """``recommend`` as a GPU model answers it: ids, scores and candidates per user."""
    return torch_recommend(model.net, model._index, model.config, hist, k, B, exclude_history)


def histories(data):
    return data.test.hist.take(np.concatenate([np.arange(len(data.test)), np.arange(len(data.val))]))


def same_up_to_ties(a_ids, a_scores, b_ids, b_scores, tol=1e-5):
    """Equal scores everywhere, equal ids wherever the score is not tied with a neighbour."""
    np.testing.assert_allclose(a_scores, b_scores, rtol=tol, atol=tol)
    s = a_scores
    tied = np.zeros(s.shape, dtype=bool)
    with np.errstate(invalid="ignore"):  # -inf - -inf in padding: not close, not tied
        close = np.abs(s[:, 1:] - s[:, :-1]) <= tol
    tied[:, 1:] |= close
    tied[:, :-1] |= close
    np.testing.assert_array_equal(np.where(tied, 0, a_ids), np.where(tied, 0, b_ids))


@pytest.mark.parametrize("B", [1, 3, 5, 64])
def test_paths_equal_beam_search(model, data, B):
    hist = histories(data)
    paths, logp = model.beam_search(hist, B)
    u_str = model.user_embeddings(hist, "str")
    got_paths, got_logp = Retriever.from_model(model).beam(u_str, B)
    assert got_paths.shape == paths.shape and got_paths.dtype == np.int64
    same_up_to_ties(to_flat(got_paths, 4), got_logp, to_flat(paths, 4), logp)


def test_paths_equal_at_paper_shape():
    """K=100, D=3, e=64, hidden 256, B=50 on a random structure model: identical paths."""
    torch.manual_seed(0)
    st = StructureModel(StructureConfig(K=100, D=3, hidden=(256,)), 64).eval()
    u = torch.randn(12, 64)
    paths, logp = beam_search(st, u, 50)
    index = PathIndex(np.zeros((1, 1), dtype=np.int64))
    got_paths, got_logp = Retriever.from_parts(st, index, np.zeros((1, 64), np.float32)).beam(u.numpy(), 50)
    same_up_to_ties(to_flat(got_paths, 100), got_logp, to_flat(paths, 100).numpy(), logp.numpy())


@pytest.mark.parametrize("B", [1, 2, 5, 64])
def test_search_equals_recommend(model, data, B):
    hist = histories(data)
    k = 7
    ids, scores, scored = torch_path(model, hist, k, B)
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    r = Retriever.from_model(model)
    got_ids, got_scores, n_cand = r.search(u_str, u_rr, k, B)
    same_up_to_ties(got_ids, got_scores, ids, scores)
    np.testing.assert_array_equal(n_cand, scored)
    rec_ids, rec_scores = model.recommend(hist, k, B=B)  # a CPU model: the Retriever's answer
    np.testing.assert_array_equal(rec_ids, got_ids)
    np.testing.assert_array_equal(rec_scores, got_scores)
    np.testing.assert_array_equal(model.last_items_scored, n_cand)
    chunked = r.search(u_str, u_rr, k, B, chunk=5)  # several blocks of users: the same answer
    same_up_to_ties(chunked[0], chunked[1], got_ids, got_scores)  # (to float rounding: see below)
    np.testing.assert_array_equal(chunked[2], n_cand)
    for u in range(len(hist)):  # batch 1 takes its own branch: the same answer, ties aside
        one = r.search(u_str[u : u + 1], u_rr[u : u + 1], k, B)
        same_up_to_ties(one[0], one[1], got_ids[u : u + 1], got_scores[u : u + 1])
        assert one[2][0] == n_cand[u]


def test_candidates_are_the_union_of_the_paths():
    rng = np.random.default_rng(0)
    pi = random_assignment(50, 2, 27, rng)  # K=3, D=3: some paths empty
    index = PathIndex(pi)
    r = Retriever(3, 3, np.zeros((1, 3)), np.zeros(3), [], [], index.path_ids, index.indptr,
                  index.items, np.zeros((50, 1), np.float32))
    flat = rng.integers(0, 27, size=(6, 4))
    items, row, lengths = r.candidates(flat)
    want = index.candidates(flat)
    np.testing.assert_array_equal(lengths, want.lengths)
    np.testing.assert_array_equal(row, want.row_ids())
    np.testing.assert_array_equal(items, want.values)  # batched: sorted within each row
    for u in range(6):
        one, one_row, n1 = r.candidates(flat[u : u + 1])
        np.testing.assert_array_equal(np.sort(one), want[u])  # one row: distinct, any order
        assert n1[0] == len(one) and np.all(one_row == 0)


def test_k_larger_than_candidates_pads(model, data):
    hist = histories(data)
    r = Retriever.from_model(model)
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    ids, scores, n_cand = r.search(u_str, u_rr, 1000, 1)
    for u in range(len(hist)):
        assert np.all(ids[u, : n_cand[u]] >= 0) and np.all(ids[u, n_cand[u] :] == -1)
        assert np.all(np.isneginf(scores[u, n_cand[u] :]))
        assert len(set(ids[u, : n_cand[u]].tolist())) == n_cand[u]
    with pytest.raises(ValueError):
        r.search(u_str, u_rr, 0, 1)
    with pytest.raises(ValueError):
        r.beam(u_str, 0)


def test_save_load_round_trip(model, data, tmp_path):
    hist = histories(data)
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    r = Retriever.from_model(model)
    r.save(tmp_path / "r")
    want = r.search(u_str, u_rr, 7, 3)
    for mmap in (False, True):
        got = Retriever.load(tmp_path / "r", mmap=mmap).search(u_str, u_rr, 7, 3)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_dense_scoring_gives_the_same_answer(model, data, monkeypatch):
    """Above DENSE_FRACTION of V a user's candidates are scored against every item: a matrix-vector
    product at batch 1, a (users, V) matrix product for up to DENSE_BLOCK scores in a batch."""
    import deep_retrieval.fast as fast

    hist = histories(data)
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    r = Retriever.from_model(model)
    want = r.search(u_str, u_rr, 7, 3)
    monkeypatch.setattr(fast, "DENSE_FRACTION", 0.0)
    got = r.search(u_str, u_rr, 7, 3)
    same_up_to_ties(got[0], got[1], want[0], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    one = r.search(u_str[:1], u_rr[:1], 7, 3)
    same_up_to_ties(one[0], one[1], want[0][:1], want[1][:1])
    monkeypatch.setattr(fast, "DENSE_BLOCK", 2 * model.n_items)  # two users per product
    pairs = r.search(u_str, u_rr, 7, 3)
    same_up_to_ties(pairs[0], pairs[1], want[0], want[1])
    np.testing.assert_array_equal(pairs[2], want[2])


def test_exclude_history_equals_recommend(model, data):
    hist = histories(data)
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    r = Retriever.from_model(model)
    for B in (2, 5):
        ids, scores, scored = torch_path(model, hist, 7, B, exclude_history=True)
        got = r.search(u_str, u_rr, 7, B, drop=hist)
        same_up_to_ties(got[0], got[1], ids, scores)
        np.testing.assert_array_equal(got[2], scored)
        rec = model.recommend(hist, 7, exclude_history=True, B=B)
        np.testing.assert_array_equal(rec[0], got[0])
        np.testing.assert_array_equal(model.last_items_scored, got[2])
        assert not any(set(got[0][u].tolist()) & set(hist[u].tolist()) for u in range(len(hist)))
        chunked = r.search(u_str, u_rr, 7, B, chunk=3, drop=hist)  # drop is sliced per block
        same_up_to_ties(chunked[0], chunked[1], got[0], got[1])  # an empty history ties everything
        np.testing.assert_array_equal(chunked[2], got[2])
        for u in range(len(hist)):  # batch 1
            one = r.search(u_str[u : u + 1], u_rr[u : u + 1], 7, B, drop=[hist[u]])
            same_up_to_ties(one[0], one[1], ids[u : u + 1], scores[u : u + 1])
            assert one[2][0] == scored[u]


@pytest.mark.parametrize("batch", [1, 6])
def test_exclude_and_allow_filter_the_full_ranking(model, data, batch):
    """Oracle: rank every candidate (k = V), drop what the filters forbid, keep the first k."""
    hist = histories(data)
    hist = hist.take(np.flatnonzero(hist.lengths > 0)[:batch])  # an empty history ties every score
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    r = Retriever.from_model(model)
    V, k, B = model.n_items, 5, 4
    full_ids, full_scores, _ = r.search(u_str, u_rr, V, B)
    rng = np.random.default_rng(1)
    exclude = rng.choice(V, V // 3, replace=False)
    allow = rng.choice(V, V // 2, replace=False)
    cases = [(exclude, None), (None, allow), (exclude, allow), (np.zeros(0, np.int64), np.zeros(0, np.int64))]
    for ex, al in cases:
        ids, scores, n_cand = r.search(u_str, u_rr, k, B, exclude=ex, allow=al)
        for u in range(batch):
            ok = full_ids[u] >= 0
            if ex is not None:
                ok &= ~np.isin(full_ids[u], ex)
            if al is not None:
                ok &= np.isin(full_ids[u], al)
            want_ids, want_s = full_ids[u][ok][:k], full_scores[u][ok][:k]
            assert n_cand[u] == ok.sum()
            np.testing.assert_array_equal(ids[u, : len(want_ids)], want_ids)
            np.testing.assert_allclose(scores[u, : len(want_s)], want_s, rtol=1e-6)
            assert np.all(ids[u, len(want_ids) :] == -1)


def test_concurrent_searches_match_sequential(model, data):
    """Many threads calling search on one Retriever (batch 1 uses per-thread scratch)."""
    from concurrent.futures import ThreadPoolExecutor

    hist = histories(data)
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    r = Retriever.from_model(model)
    n = len(hist)

    def one(u):
        return r.search(u_str[u : u + 1], u_rr[u : u + 1], 7, 5, drop=[hist[u]])

    want = [one(u) for u in range(n)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, list(range(n)) * 20))
    for i, g in enumerate(got):
        for a, b in zip(g, want[i % n], strict=True):
            np.testing.assert_array_equal(a, b)


def test_recommend_follows_new_paths_and_weights(model, data):
    """A CPU model's recommend serves through a cached Retriever: a new assignment or changed
    weights (``invalidate``) rebuild it, so recommend keeps agreeing with the torch path."""
    m = copy.deepcopy(model)
    hist = histories(data)
    first = m.retriever()
    assert m.retriever() is first
    m.set_assignment(np.roll(m.assignment, 1, axis=0))  # every item on another item's paths
    assert m.retriever() is not first
    ids, scores, _ = torch_path(m, hist, 7, 3)
    got_ids, got_scores = m.recommend(hist, 7, B=3)
    same_up_to_ties(got_ids, got_scores, ids, scores)
    with torch.no_grad():
        m.net.reranker.item_emb.weight.mul_(-1.0)
    m.invalidate()
    ids, scores, _ = torch_path(m, hist, 7, 3)
    got_ids, got_scores = m.recommend(hist, 7, B=3)
    same_up_to_ties(got_ids, got_scores, ids, scores)


def test_retrieve_refuses_a_model_off_the_cpu(model, data):
    from deep_retrieval.errors import DRError

    m = copy.deepcopy(model)
    m.net.to("meta")
    with pytest.raises(DRError, match="retrieve serves a model on the CPU"):
        m.retrieve(histories(data), 5, 3)


def test_a_serving_model_copies_and_pickles(model, data):
    """The cached Retriever (with its per-thread scratch) does not stop copy or pickle."""
    hist = histories(data)
    want = model.recommend(hist, 5)  # builds the Retriever
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        got = other.recommend(hist, 5)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        got1 = other.recommend(hist.take(np.arange(1)), 5)  # batch 1 uses the scratch
        same_up_to_ties(got1[0], got1[1], want[0][:1], want[1][:1])


def test_model_retrieve_applies_the_servers_filters(model, data):
    hist = histories(data)
    u_str, u_rr = model.user_embeddings(hist, "str"), model.user_embeddings(hist, "rr")
    r = Retriever.from_model(model)
    rng = np.random.default_rng(2)
    exclude = rng.choice(model.n_items, 10, replace=False)
    allow = rng.choice(model.n_items, 30, replace=False)
    got = model.retrieve(hist, 5, 4, drop=hist, exclude=exclude, allow=allow)
    want = r.search(u_str, u_rr, 5, 4, drop=hist, exclude=exclude, allow=allow)
    same_up_to_ties(got[0], got[1], want[0], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    kept = got[0][got[0] >= 0]
    assert not np.isin(kept, exclude).any() and np.isin(kept, allow).all()


@pytest.mark.parametrize("call, msg", [
    (lambda m, h: m.retrieve(h, 5, drop=h.take(np.arange(1))), "drop has 1 rows"),
    (lambda m, h: m.retrieve(h, 0), "k must be >= 1"),
    (lambda m, h: m.retrieve(h, 5, B=0), "beam size B"),
    (lambda m, h: m.retrieve([[10**6]], 5), "outside"),
])
def test_model_retrieve_refuses_bad_inputs(model, data, call, msg):
    from deep_retrieval.errors import DRError

    with pytest.raises(DRError, match=msg):
        call(model, histories(data))
