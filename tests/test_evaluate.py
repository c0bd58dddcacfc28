import json

import numpy as np
import pytest

from deep_retrieval.baselines import ItemCF, Popularity
from deep_retrieval.data.dataset import Ragged, Split
from deep_retrieval.errors import DRError
from deep_retrieval.evaluate import build_methods, evaluate, format_table
from deep_retrieval.recommender import Recommender
from tests.test_contract import synthetic_dataset

RESULT_KEYS = [
    "method",
    "k",
    "precision",
    "recall",
    "f1",
    "ndcg",
    "hit",
    "items_scored_per_user",
    "latency_ms_batch1",
    "latency_ms_batched",
]


class Oracle(Recommender):
    """Returns each user's ground truth: history row i is [i], so it is the lookup key."""

    name = "oracle"

    def __init__(self, truth: Ragged):
        self.truth = truth

    def fit(self, dataset):
        return self

    def recommend(self, histories, k, exclude_history=False):
        n = len(histories)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        for r, h in enumerate(histories):
            t = self.truth[int(h[0])][:k]
            ids[r, : len(t)] = t
            scores[r, : len(t)] = -np.arange(len(t))
        self.last_items_scored = np.full(n, 7)
        return ids, scores

    def save(self, path):
        raise NotImplementedError

    @classmethod
    def load(cls, path):
        raise NotImplementedError


@pytest.fixture(scope="module")
def dataset():
    ds = synthetic_dataset(seed=6)
    n = 8
    truth = [[(i + j) % ds.n_items for j in range(1 + i % 4)] for i in range(n)]
    truth[5] = []  # an empty ground truth is skipped
    ds.test = Split(
        np.arange(n), Ragged.from_lists([[i] for i in range(n)]), Ragged.from_lists(truth)
    )
    return ds


@pytest.fixture(scope="module")
def result(dataset):
    methods = {"oracle": Oracle(dataset.test.truth), "popularity": Popularity().fit(dataset)}
    return evaluate(dataset, methods, ks=[10, 2], batch_size=3, latency_users=4)


def test_shape_and_keys(result):
    assert list(result) == ["dataset", "split", "n_users", "exclude_history", "results"]
    assert result["split"] == "test" and result["exclude_history"] is False
    assert result["n_users"] == 7
    assert [(r["method"], r["k"]) for r in result["results"]] == [
        ("oracle", 2),
        ("oracle", 10),
        ("popularity", 2),
        ("popularity", 10),
    ]
    for r in result["results"]:
        assert list(r) == RESULT_KEYS
        for m in ("precision", "recall", "f1", "ndcg", "hit"):
            assert 0.0 <= r[m] <= 1.0
        assert r["latency_ms_batch1"] >= 0 and r["latency_ms_batched"] >= 0
    json.dumps(result)  # plain JSON types only


def test_oracle_gets_full_recall(result, dataset):
    r = result["results"][1]  # oracle @10
    assert r["recall"] == 1.0 and r["hit"] == 1.0 and r["ndcg"] == pytest.approx(1.0)
    sizes = [len(t) for t in dataset.test.truth.to_lists() if t]
    assert r["precision"] == pytest.approx(np.mean(sizes) / 10)
    assert r["items_scored_per_user"] == 7
    assert result["results"][2]["items_scored_per_user"] == dataset.n_items


def test_format_table(result):
    table = format_table(result)
    assert "oracle" in table and "popularity" in table and "percent" in table
    assert "100.00" in table  # oracle recall@10 as a percentage
    lines = table.splitlines()
    assert len(lines) == 2 + 1 + len(result["results"])


def test_evaluate_errors(dataset):
    with pytest.raises(DRError):
        evaluate(dataset, {}, ks=[10])
    with pytest.raises(DRError):
        evaluate(dataset, {"p": Popularity().fit(dataset)}, ks=[])
    with pytest.raises(DRError):
        evaluate(dataset, {"p": Popularity().fit(dataset)}, ks=[10], split="nope")


def test_build_methods(dataset):
    methods = build_methods(["popularity", "item-cf"], dataset)
    assert isinstance(methods["popularity"], Popularity)
    assert isinstance(methods["item-cf"], ItemCF) and methods["item-cf"].sim is not None
    with pytest.raises(DRError):
        build_methods([], dataset)
    with pytest.raises(DRError, match="popularity, item-cf"):
        build_methods(["nope"], dataset)
    with pytest.raises(DRError, match="model directory"):
        build_methods(["brute-force"], dataset)
