"""Pluggable final scoring: DR's candidates reranked by another recommender."""

import numpy as np
import pytest

from deep_retrieval.baselines import EASE, BruteForce, ItemCF, RP3beta
from deep_retrieval.blend import Blend, LogMean
from deep_retrieval.errors import DRError
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.rerank import Reranked
from tests.test_contract import synthetic_dataset
from tests.test_model import tiny_config


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(seed=3)


@pytest.fixture(scope="module")
def dr(data):
    return DeepRetrieval(tiny_config()).fit(data, log=lambda _: None)


def blend_of_dr_and_rp3beta(dr):
    return Blend([BruteForce(dr.net.reranker.item_embeddings(), encode=dr.user_embeddings),
                  LogMean(RP3beta())], [1.0, 0.5])


@pytest.mark.parametrize("make", [lambda dr: RP3beta(), lambda dr: ItemCF(), lambda dr: EASE(l2=10.0),
                                  blend_of_dr_and_rp3beta])
@pytest.mark.parametrize("exclude", [False, True])
def test_rerank_with_every_path_equals_the_scorer_over_all_items(dr, data, make, exclude):
    scorer = make(dr).fit(data)
    S = dr.config.structure
    hist = data.test.hist
    ids, scores = Reranked(dr, scorer, B=S.K**S.D).recommend(hist, 7, exclude_history=exclude)
    want_ids, want_scores = scorer.recommend(hist, 7, exclude_history=exclude)
    finite = np.isfinite(want_scores)
    np.testing.assert_allclose(scores[finite], want_scores[finite], rtol=1e-5)  # ties may order differently
    # where the scorer has nothing left to rank (it pads), every candidate is scored: the fillers score 0
    assert np.all(scores[~finite] <= 0) and np.all(ids[~finite] >= 0)
    for u in range(len(hist)):  # the same items above the k-th score
        cut = want_scores[u][finite[u]].min(initial=np.inf)
        assert set(ids[u][scores[u] > cut]) == set(want_ids[u][want_scores[u] > cut])


def test_rerank_returns_only_dr_candidates_ordered_by_the_scorer(dr, data):
    scorer = RP3beta().fit(data)
    hist = data.test.hist
    rr = Reranked(dr, scorer, B=2)
    ids, scores = rr.recommend(hist, 5)
    cands = dr.candidates(hist, B=2)
    np.testing.assert_array_equal(rr.last_items_scored, cands.lengths)
    for u in range(len(hist)):
        got = ids[u][ids[u] >= 0]
        assert set(got) <= set(cands[u])
        assert len(got) == min(5, len(cands[u]))
        s = scorer.score_items(hist.take(np.array([u])), cands.take(np.array([u]))).values
        best = np.sort(s)[::-1][: len(got)]
        np.testing.assert_allclose(scores[u][: len(got)], best, rtol=1e-6)
    with pytest.raises(DRError):
        rr.recommend(hist, 0)


@pytest.mark.parametrize("exclude", [False, True])
def test_pick_blend_takes_the_best_validation_recall(dr, data, exclude):
    from deep_retrieval.evaluate import evaluate
    from deep_retrieval.rerank import pick_blend

    scorer = RP3beta().fit(data)
    blend, rows = pick_blend(dr, scorer, data, [0.0, 0.5, 4.0], eps=[0.01, 0.3], k=3,
                             exclude_history=exclude, batch_size=7)
    assert [(r["w"], r["eps"]) for r in rows] == [(w, e) for e in (0.01, 0.3) for w in (0.0, 0.5, 4.0)]
    for r in rows:  # each row is exactly what evaluate gives for that blend over DR's candidates
        b = Blend([dr.as_recommenders()["brute-force"], LogMean(scorer, r["eps"], data.n_items)],
                  [1.0, r["w"]], data.n_items)
        want = evaluate(data, {"b": Reranked(dr, b)}, [3], split="val", exclude_history=exclude,
                        batch_size=7, latency_users=0)["results"][0]
        assert (r["recall"], r["ndcg"]) == (want["recall"], want["ndcg"])
    best = max(rows, key=lambda r: r["recall"])
    assert (blend.weights[1], blend.parts[1].eps) == (best["w"], best["eps"])
    with pytest.raises(DRError, match="at least one weight"):
        pick_blend(dr, scorer, data, [], k=3)
