"""The recommender contract, checked once for every recommender.

Subclass ``RecommenderContract`` and define ``make(self, dataset)`` returning an unfitted
recommender; every ``test_*`` method below then runs on a small seeded synthetic data set.
The fitted recommender is a class-scoped fixture (one fit per class).
"""

import numpy as np
import pytest

from deep_retrieval.baselines import ALS, EASE, HNSW, BruteForce, ItemCF, Popularity, RP3beta
from deep_retrieval.data.dataset import Dataset, Ragged, Split
from deep_retrieval.errors import DRError
from deep_retrieval.recommender import Recommender

N_ITEMS = 40


def synthetic_dataset(seed: int = 0, n_items: int = N_ITEMS, n_train: int = 60) -> Dataset:
    """Random sequences over a skewed item distribution; the test split has an empty history."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()

    def rows(n, lo, hi):
        return [rng.choice(n_items, size=rng.integers(lo, hi), p=p) for _ in range(n)]

    train = Ragged.from_lists(rows(n_train, 2, 12))
    n_eval = 8
    hist = rows(n_eval, 1, 8)
    hist[3] = []
    val = Split(np.arange(n_eval), Ragged.from_lists(hist), Ragged.from_lists(rows(n_eval, 1, 5)))
    test = Split(
        np.arange(n_eval, 2 * n_eval),
        Ragged.from_lists(hist),
        Ragged.from_lists(rows(n_eval, 1, 5)),
    )
    n_users = n_train + 2 * n_eval
    return Dataset(
        item_ids=np.arange(n_items),
        user_ids=np.arange(n_users),
        train=train,
        train_users=np.arange(2 * n_eval, n_users),
        val=val,
        test=test,
    )


def check_rows(ids: np.ndarray, scores: np.ndarray, n: int, k: int, n_items: int) -> None:
    """Shape, dtype, valid ids, -1 exactly where -inf, sorted scores, no duplicates."""
    assert ids.shape == (n, k) and scores.shape == (n, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert np.all((ids == -1) | ((ids >= 0) & (ids < n_items)))
    assert np.array_equal(ids == -1, np.isneginf(scores))
    assert not np.isnan(scores).any()
    assert np.all(scores[:, 1:] <= scores[:, :-1])
    srt = np.sort(ids, axis=1)
    assert not np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0))


class RecommenderContract:
    k = 5

    def make(self, dataset: Dataset):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls) -> Dataset:
        return synthetic_dataset()

    @pytest.fixture(scope="class")
    @classmethod
    def rec(cls, dataset):
        return cls().make(dataset).fit(dataset)

    @pytest.fixture(scope="class")
    @classmethod
    def hist(cls, dataset) -> Ragged:
        return dataset.test.hist

    def test_fit_returns_self(self, dataset):
        r = self.make(dataset)
        assert r.fit(dataset) is r

    @pytest.mark.parametrize("exclude", [False, True])
    def test_rows_well_formed(self, rec, hist, dataset, exclude):
        ids, scores = rec.recommend(hist, self.k, exclude_history=exclude)
        check_rows(ids, scores, len(hist), self.k, dataset.n_items)

    def test_k_larger_than_catalogue_pads(self, rec, hist, dataset):
        k = dataset.n_items + 5
        ids, scores = rec.recommend(hist, k)
        check_rows(ids, scores, len(hist), k, dataset.n_items)
        assert np.all(ids[:, dataset.n_items :] == -1)
        assert np.all(np.isneginf(scores[:, dataset.n_items :]))

    @pytest.mark.parametrize("k", [5, N_ITEMS])
    def test_exclude_history_never_returns_history(self, rec, hist, dataset, k):
        ids, scores = rec.recommend(hist, k, exclude_history=True)
        check_rows(ids, scores, len(hist), k, dataset.n_items)
        for u in range(len(hist)):
            assert not set(ids[u].tolist()) & set(hist[u].tolist())

    def test_list_of_lists_input(self, rec, hist):
        a = rec.recommend(hist, self.k)
        b = rec.recommend(hist.to_lists(), self.k)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    @pytest.mark.parametrize("exclude", [False, True])
    def test_empty_history_row(self, rec, dataset, exclude):
        for histories in ([[]], [[], [1, 2]]):
            ids, scores = rec.recommend(histories, self.k, exclude_history=exclude)
            check_rows(ids, scores, len(histories), self.k, dataset.n_items)

    def test_save_load_identical(self, rec, hist, tmp_path):
        rec.save(tmp_path / "rec")
        again = type(rec).load(tmp_path / "rec")
        for exclude in (False, True):
            a = rec.recommend(hist, self.k, exclude_history=exclude)
            b = again.recommend(hist, self.k, exclude_history=exclude)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])

    def test_last_items_scored(self, rec, hist):
        rec.recommend(hist, self.k)
        scored = np.asarray(rec.last_items_scored)
        assert scored.shape == (len(hist),)
        assert np.all(scored >= 0)

    def test_score_items_equals_ranking_scores(self, rec, hist, dataset):
        """Scoring every item gives the scores ``recommend`` ranks; a shuffled subset the same values."""
        V, n = dataset.n_items, len(hist)
        every = Ragged.from_lists([np.arange(V)] * n)
        if type(rec).score_items is Recommender.score_items:  # optional: says so when absent
            with pytest.raises(DRError, match="cannot score"):
                rec.score_items(hist, every)
            return
        out = rec.score_items(hist, every)
        assert out.values.dtype == np.float32
        np.testing.assert_array_equal(out.offsets, every.offsets)
        np.testing.assert_array_equal(rec.last_items_scored, np.full(n, V))
        full = out.values.reshape(n, V)  # (n, V)
        ids, scores = rec.recommend(hist, V)
        ok = ids >= 0
        np.testing.assert_allclose(np.take_along_axis(full, np.maximum(ids, 0), 1)[ok], scores[ok],
                                   rtol=1e-5, atol=1e-6)
        for u in range(n):  # items left out of the ranking score no better than the last one ranked
            rest = np.setdiff1d(np.arange(V), ids[u][ok[u]])
            if len(rest) and ok[u].any():
                assert full[u, rest].max() <= scores[u][ok[u]][-1] + 1e-6
        rng = np.random.default_rng(0)
        subset = Ragged.from_lists([rng.permutation(V)[: rng.integers(0, 6)] for _ in range(n)])
        part = rec.score_items(hist.to_lists(), subset)
        np.testing.assert_array_equal(part.offsets, subset.offsets)
        np.testing.assert_allclose(part.values, full[subset.row_ids(), subset.values], rtol=1e-5, atol=1e-6)


class TestPopularityContract(RecommenderContract):
    def make(self, dataset):
        return Popularity()


class TestPopularityAfterContract(RecommenderContract):
    def make(self, dataset):
        return Popularity(after=True)


class TestItemCFContract(RecommenderContract):
    def make(self, dataset):
        return ItemCF(neighbours=10, shrink=2.0)


class TestRP3betaContract(RecommenderContract):
    def make(self, dataset):
        return RP3beta(alpha=0.7, beta=0.3, neighbours=10, normalize=True)


class TestEASEContract(RecommenderContract):
    def make(self, dataset):
        return EASE(l2=10.0)


class TestALSContract(RecommenderContract):
    def make(self, dataset):
        pytest.importorskip("implicit")
        return ALS(factors=8, regularization=0.1, alpha=5.0, iterations=5)


def item_embeddings(dataset: Dataset) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(dataset.n_items, 8)).astype(np.float32)


class TestBruteForceContract(RecommenderContract):
    def make(self, dataset):
        return BruteForce(item_embeddings(dataset))


class TestHNSWContract(RecommenderContract):
    def make(self, dataset):
        pytest.importorskip("faiss")
        return HNSW(item_embeddings(dataset), ef_search=64)
