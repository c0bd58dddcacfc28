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


# ------------------------------------------------------------------ pick_beam (dr beam)
@pytest.fixture(scope="module")
def beam_data():
    return synthetic_dataset(seed=4)


@pytest.fixture(scope="module")
def beam_models(beam_data):
    from deep_retrieval.model import DeepRetrieval
    from tests.test_model import quiet, tiny_config

    return [DeepRetrieval(tiny_config(train__seed=s)).fit(beam_data, log=quiet) for s in (0, 1)]


def _no_empty_histories(ds):
    """``ds`` without the validation users whose history is empty: their user vector is zero
    (the tiny models' GRU), so every item ties and DR and brute force may break the tie on
    different items. Where B = K^D makes DR brute force, equal recall needs untied scores."""
    from deep_retrieval.data.dataset import Split

    keep = np.flatnonzero(ds.val.hist.lengths > 0)
    val = Split(ds.val.users[keep], ds.val.hist.take(keep), ds.val.truth.take(keep))
    return dataclasses.replace(ds, val=val)


def _val_recall(rec, ds, k):
    return evaluate(ds, {"x": rec}, [k], split="val", latency_users=0)["results"][0]["recall"]


def test_pick_beam_rows_are_pooled_validation_recalls_and_never_read_test(beam_models, beam_data):
    from deep_retrieval.tuning import _AtBeam, pick_beam

    ds = dataclasses.replace(beam_data, test=Forbidden())
    pick = pick_beam(beam_models, ds, [2, 1, 2], [3, 5], target=0.5, latency_users=2)
    assert [r["B"] for r in pick.rows] == [1, 2]  # sorted, distinct
    for k in (3, 5):
        bf = np.mean([_val_recall(m.as_recommenders()["brute-force"], ds, k) for m in beam_models])
        assert pick.exact["brute-force"][k] == pytest.approx(bf)
        for row in pick.rows:
            dr = np.mean([_val_recall(_AtBeam(m, row["B"], blend=False), ds, k) for m in beam_models])
            assert row["recall"][k] == pytest.approx(dr)
            assert row["ratio"][k] == pytest.approx(dr / bf)
    assert "ratio_blend" not in pick.rows[0]  # the tiny models carry no blend
    assert all(r["items_scored"] <= ds.n_items and r["latency_ms_batch1"] > 0 for r in pick.rows)


def test_pick_beam_full_beam_equals_brute_force_and_picks_the_smallest_b_that_keeps_the_target(
        beam_models, beam_data):
    from deep_retrieval.tuning import pick_beam

    S = beam_models[0].config.structure
    full = S.K**S.D  # every path searched: DR reranks every item, it is brute force
    beam_data = _no_empty_histories(beam_data)
    pick = pick_beam(beam_models, beam_data, [1, 2, 3, full], [3, 5], target=1.0, latency_users=0)
    assert pick.rows[-1]["ratio"] == {3: pytest.approx(1.0), 5: pytest.approx(1.0)}
    assert pick.rows[-1]["items_scored"] == beam_data.n_items
    keeps = [r["B"] for r in pick.rows if min(r["ratio"].values()) >= 1.0]
    assert pick.B == min(keeps) and "pick: B = " in pick.table()


def test_smallest_keeping_needs_every_k_and_the_blend():
    from deep_retrieval.tuning import smallest_keeping

    rows = [{"B": 5, "ratio": {10: 0.995, 50: 0.97}},  # @50 short
            {"B": 10, "ratio": {10: 0.999, 50: 0.991}, "ratio_blend": {10: 0.98, 50: 1.0}},  # the blend short
            {"B": 20, "ratio": {10: 0.990, 50: 0.993}, "ratio_blend": {10: 0.99, 50: 0.995}},
            {"B": 40, "ratio": {10: 1.0, 50: 1.0}}]
    assert smallest_keeping(rows, 0.99) == 20
    assert smallest_keeping(rows, 0.97) == 5
    assert smallest_keeping(rows, 0.98) == 10
    assert smallest_keeping(rows[::-1], 0.99) == 20  # the smallest B, not the first row
    assert smallest_keeping(rows, 1.0) == 40
    assert smallest_keeping(rows[:3], 1.0) is None


def test_pick_beam_scores_a_blend_as_it_serves(beam_models, beam_data):
    from deep_retrieval.blend import Blend, LogMean
    from deep_retrieval.model import DeepRetrieval
    from deep_retrieval.tuning import _AtBeam, pick_beam
    from tests.test_model import quiet
    from tests.test_model_blend import blended_config

    m = DeepRetrieval(blended_config(weights=(4.0,), eps=(0.3,))).fit(beam_data, log=quiet)
    beam_data = _no_empty_histories(beam_data)  # B = K^D is the blend over all items: no ties
    pick = pick_beam([m], beam_data, [1, 9], [5], target=0.99, latency_users=0)
    blend = m.as_recommenders()["blend"]
    assert isinstance(blend, Blend) and isinstance(blend.parts[1], LogMean)
    assert pick.exact["blend"][5] == pytest.approx(_val_recall(blend, beam_data, 5))
    for row in pick.rows:
        served = _val_recall(_AtBeam(m, row["B"], blend=True), beam_data, 5)
        assert row["recall_blend"][5] == pytest.approx(served)
        assert row["ratio_blend"][5] == pytest.approx(served / pick.exact["blend"][5])
    assert pick.rows[-1]["ratio_blend"][5] == pytest.approx(1.0)  # B = K^D: the blend over all items
    assert "+blend R@5 /blend" in pick.table()
    timed = pick_beam([m], beam_data, [2], [5], target=0.99, latency_users=3)
    row = timed.rows[0]  # DR + blend timed as it serves, apart from DR alone (not a copy of it)
    assert row["latency_ms_batch1_blend"] > 0 and row["latency_ms_batched_blend"] > 0
    assert row["latency_ms_batch1_blend"] != row["latency_ms_batch1"]
    assert "ms b1 +blend" in timed.table() and f"{row['latency_ms_batch1_blend']:.3f}" in timed.table()
    with pytest.raises(DRError, match="all carry a blend, or none"):
        pick_beam([m, beam_models[0]], beam_data, [1], [5])


def test_pick_beam_refuses_bad_requests(beam_models, beam_data):
    from deep_retrieval.tuning import pick_beam

    for kwargs, msg in [
        ({"models": []}, "at least one model"),
        ({"beams": [0, 2]}, "beams must be integers >= 1"),
        ({"ks": []}, "ks must be"),
        ({"target": 0.0}, "target must be in"),
        ({"target": 1.5}, "target must be in"),
        ({"dataset": synthetic_dataset(seed=4, n_items=beam_data.n_items + 5)}, "not the data set's"),
    ]:
        args = {"models": beam_models, "dataset": beam_data, "beams": [1, 2], "ks": [5], **kwargs}
        with pytest.raises(DRError, match=msg):
            pick_beam(**args)
