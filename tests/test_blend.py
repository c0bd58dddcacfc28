"""Blended final scoring: weighted sums of recommenders' scores, and the log-mean transform."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_retrieval.baselines import BruteForce, RP3beta
from deep_retrieval.blend import Blend, LogMean, distinct_lengths
from deep_retrieval.data.dataset import Ragged
from deep_retrieval.errors import DRError
from tests.test_contract import RecommenderContract, item_embeddings, synthetic_dataset


def make_blend(dataset, w=0.5, eps=0.01):
    return Blend([BruteForce(item_embeddings(dataset)), LogMean(RP3beta(neighbours=10), eps=eps)], [1.0, w])


class TestBlendContract(RecommenderContract):
    def make(self, dataset):
        return make_blend(dataset)

    def test_save_load_identical(self, rec, hist, tmp_path):  # a combinator: its parts are saved
        with pytest.raises(DRError, match="save each part"):
            rec.save(tmp_path / "rec")
        with pytest.raises(DRError, match="load each part"):
            Blend.load(tmp_path / "rec")


class TestLogMeanContract(RecommenderContract):
    def make(self, dataset):
        return LogMean(RP3beta(neighbours=10), eps=0.05)

    def test_save_load_identical(self, rec, hist, tmp_path):
        with pytest.raises(DRError, match="save each part"):
            rec.save(tmp_path / "rec")


@pytest.mark.parametrize("w, eps", [(0.0, 0.01), (0.5, 0.01), (2.0, 0.3)])
def test_blend_equals_a_direct_computation(w, eps):
    data = synthetic_dataset(seed=5)
    blend = make_blend(data, w, eps).fit(data)
    hist = data.test.hist
    emb = item_embeddings(data)  # (V, e)
    sim = blend.parts[1].scorer.sim.toarray()  # (V, V) RP3beta's neighbours
    want = np.zeros((len(hist), data.n_items))
    for u in range(len(hist)):
        h = sorted(set(hist[u].tolist()))
        user = emb[hist[u]].mean(0) if len(hist[u]) else np.zeros(emb.shape[1])
        rp3 = sim[h].sum(0) if h else np.zeros(data.n_items)
        want[u] = emb @ user + w * np.log(np.maximum(rp3, 0) / max(len(h), 1) + eps)
    every = Ragged.from_lists([np.arange(data.n_items)] * len(hist))
    got = blend.score_items(hist, every).values.reshape(len(hist), -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ids, scores = blend.recommend(hist, 5, exclude_history=True)
    for u in range(len(hist)):
        w_u = want[u].copy()
        w_u[hist[u]] = -np.inf
        np.testing.assert_allclose(scores[u], np.sort(w_u)[::-1][:5], rtol=1e-5, atol=1e-5)


def test_weight_zero_gives_the_first_part_alone():
    data = synthetic_dataset(seed=6)
    bf = BruteForce(item_embeddings(data))
    a = Blend([bf, LogMean(RP3beta())], [1.0, 0.0]).fit(data).recommend(data.test.hist, 6)
    b = bf.recommend(data.test.hist, 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=8), max_size=6))
def test_distinct_lengths(rows):
    np.testing.assert_array_equal(distinct_lengths(Ragged.from_lists(rows)), [len(set(r)) for r in rows])


def test_bad_blends_are_refused():
    data = synthetic_dataset()
    with pytest.raises(DRError, match="one weight per part"):
        Blend([RP3beta()], [1.0, 2.0])
    with pytest.raises(DRError, match="finite"):
        Blend([RP3beta()], [float("nan")])
    with pytest.raises(DRError, match="eps > 0"):
        LogMean(RP3beta(), eps=0.0)
    with pytest.raises(DRError, match="not fitted"):
        Blend([RP3beta()], [1.0]).recommend(data.test.hist, 3)
