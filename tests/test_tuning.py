"""Grid search on validation users (tuning.tune) and baseline specs with parameters (build_methods)."""

import dataclasses

import numpy as np
import pytest

from deep_retrieval.baselines import EASE, ItemCF, RP3beta
from deep_retrieval.errors import DRError
from deep_retrieval.evaluate import build_methods, evaluate
from deep_retrieval.tuning import grid_points, tune
from tests.test_contract import synthetic_dataset


class Forbidden:
    """Stands in for ``dataset.test``: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"tuning read the test split ({name})")

    def __len__(self):
        raise AssertionError("tuning read the test split (len)")


def test_grid_points_order_and_errors():
    pts = grid_points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert pts == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
    for bad in ({}, {"a": []}):
        with pytest.raises(DRError, match="grid"):
            grid_points(bad)


def test_tune_picks_the_best_validation_point_without_reading_test():
    ds = dataclasses.replace(synthetic_dataset(seed=2), test=Forbidden())
    grid = {"alpha": [0.5, 1.0], "beta": [0.0, 0.5], "neighbours": [3, 20]}
    t = tune(RP3beta, grid, ds, metric="ndcg", k=5, keep_best=True)
    assert t.metric == "ndcg@5" and len(t.table) == 8
    for row in t.table:  # each value is that point's own validation score
        params = {p: row[p] for p in grid}
        res = evaluate(ds, {"x": RP3beta(**params).fit(ds)}, [5], split="val", latency_users=0)
        assert row["ndcg"] == res["results"][0]["ndcg"]
    values = [row["ndcg"] for row in t.table]
    first_best = t.table[int(np.argmax(values))]
    assert t.best == {p: first_best[p] for p in grid}
    assert len(set(values)) > 1  # the grid matters on this data, so the choice is a real one
    refit = RP3beta(**t.best).fit(ds)
    hist = ds.val.hist
    np.testing.assert_array_equal(t.recommender.recommend(hist, 5)[0], refit.recommend(hist, 5)[0])


def test_tune_without_keep_best_and_bad_metric():
    ds = synthetic_dataset(seed=3)
    t = tune(EASE, {"l2": [1.0, 10.0]}, ds, k=3)
    assert t.recommender is None and t.best["l2"] in (1.0, 10.0)
    with pytest.raises(DRError, match="unknown metric"):
        tune(EASE, {"l2": [1.0]}, ds, metric="auc")


def test_build_methods_reads_parameters():
    ds = synthetic_dataset(seed=4)
    names = "rp3beta:alpha=0.8,beta=0.3,neighbours=7,item-cf:shrink=10,ease,popularity".split(",")
    methods = build_methods(names, ds)
    assert list(methods) == ["rp3beta:alpha=0.8,beta=0.3,neighbours=7", "item-cf:shrink=10", "ease",
                             "popularity"]
    rp3 = methods["rp3beta:alpha=0.8,beta=0.3,neighbours=7"]
    assert isinstance(rp3, RP3beta) and (rp3.alpha, rp3.beta, rp3.neighbours) == (0.8, 0.3, 7)
    assert np.diff(rp3.sim.indptr).max() <= 7
    cf = methods["item-cf:shrink=10"]
    assert isinstance(cf, ItemCF) and cf.shrink == 10.0 and cf.neighbours == 200
    assert build_methods(["rp3beta:normalize=true"], ds)["rp3beta:normalize=true"].normalize is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rp3beta:gamma=1", "not PARAM=VALUE"),
        ("rp3beta:alpha", "not PARAM=VALUE"),
        ("rp3beta:neighbours=many", "cannot read 'many' as int"),
        ("rp3beta:normalize=maybe", "cannot read 'maybe' as bool"),
        ("knn:k=3", "unknown method"),
    ],
)
def test_build_methods_bad_spec_is_one_line_error(spec, message):
    with pytest.raises(DRError, match=message) as e:
        build_methods([spec], synthetic_dataset())
    assert "\n" not in str(e.value)
