"""Tests of the latent-factor generator (data/latent.py): small configs only."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_retrieval.data.dataset import Dataset, Ragged
from deep_retrieval.data.latent import (
    LatentConfig,
    LatentTruth,
    factor_cohesion,
    generate_latent,
    synth_latent,
)
from deep_retrieval.errors import DRError

SMALL = LatentConfig(n_items=600, n_users=400, n_interactions=12_000, val_users=50, test_users=50, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate_latent(SMALL)


def _rows(ds: Dataset) -> list[np.ndarray]:
    """Every user's whole log (training rows, then the eval users' history + truth)."""
    rows = [ds.train[i] for i in range(len(ds.train))]
    for s in (ds.val, ds.test):
        rows += [np.concatenate([s.hist[i], s.truth[i]]) for i in range(len(s.users))]
    return rows


def test_sizes_and_no_repeats(small):
    ds, truth = small
    rows = _rows(ds)
    assert len(rows) == SMALL.n_users
    assert sum(len(r) for r in rows) == SMALL.n_interactions  # lengths sum exactly, nothing dropped
    assert min(len(r) for r in rows) >= SMALL.min_len
    assert all(len(np.unique(r)) == len(r) for r in rows)
    assert ds.n_items == SMALL.n_items and len(ds.val) == 50 and len(ds.test) == 50
    h, t = ds.test.hist.lengths, ds.test.truth.lengths
    np.testing.assert_array_equal(h, (h + t) // 2)  # history = the first half
    assert truth.user_factors.shape == (SMALL.n_users, SMALL.dim)
    assert truth.item_factors.shape == (SMALL.n_items, SMALL.dim)


def test_deterministic_by_seed(small):
    ds, truth = small
    ds2, truth2 = generate_latent(SMALL)
    np.testing.assert_array_equal(ds.train.values, ds2.train.values)
    np.testing.assert_array_equal(ds.test.truth.values, ds2.test.truth.values)
    np.testing.assert_array_equal(truth.item_factors, truth2.item_factors)
    ds3, _ = generate_latent(replace(SMALL, seed=4))
    assert not np.array_equal(ds.train.values[:200], ds3.train.values[:200])


def test_affinity_and_top_are_the_formula(small):
    _, truth = small
    users = np.array([0, 7, 399])
    d = SMALL.dim
    want = np.array([[SMALL.beta * math.sqrt(d) * float(np.dot(truth.user_factors[u].astype(np.float64),
                                                                 truth.item_factors[v].astype(np.float64)))
                      + float(truth.item_bias[v]) for v in range(SMALL.n_items)] for u in users])
    np.testing.assert_allclose(truth.affinity(users), want, rtol=1e-9, atol=1e-9)
    top = truth.top(users, 5)
    np.testing.assert_array_equal(top, np.argsort(-want, axis=1, kind="stable")[:, :5])


def test_users_draw_what_they_like(small):
    """A user's items sit high in their own affinity ranking (taste), and items are drawn by
    popularity when taste is switched off (beta = 0)."""
    ds, truth = small
    pct = []
    for i, u in enumerate(ds.train_users[:200]):
        a = truth.affinity([u])[0]
        rank = np.argsort(np.argsort(-a))  # 0 = the user's favourite
        pct.append(1 - rank[ds.train[i]].mean() / SMALL.n_items)
    assert np.mean(pct) > 0.85  # random items would give 0.5

    flat, t0 = generate_latent(replace(SMALL, beta=0.0, n_interactions=40_000))
    counts = np.bincount(np.concatenate(_rows(flat)), minlength=SMALL.n_items)
    ranks = [np.argsort(np.argsort(x)) for x in (counts, t0.item_bias)]
    assert np.corrcoef(*ranks)[0, 1] > 0.9  # Spearman: drawn as often as the story's popularity says


def test_save_load_roundtrip_and_errors(small, tmp_path):
    _, truth = small
    truth.save(tmp_path)
    got = LatentTruth.load(tmp_path)
    np.testing.assert_array_equal(got.user_factors, truth.user_factors)
    np.testing.assert_array_equal(got.item_bias, truth.item_bias)
    assert got.beta == truth.beta
    with pytest.raises(DRError, match="not found"):
        LatentTruth.load(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "latent.npz").write_bytes(b"not a zip")
    with pytest.raises(DRError, match="corrupt"):
        LatentTruth.load(tmp_path / "bad")


def test_synth_latent_writes_a_dataset(tmp_path):
    cfg = replace(SMALL, n_items=200, n_users=100, n_interactions=2_000, val_users=10, test_users=10)
    synth_latent(tmp_path / "d", cfg, log=lambda *a: None)
    ds = Dataset.load(tmp_path / "d")
    assert ds.n_items == 200 and ds.manifest["latent"]["dim"] == cfg.dim
    assert LatentTruth.load(tmp_path / "d").item_factors.shape == (200, cfg.dim)


@pytest.mark.parametrize("bad, msg", [
    ({"dim": 0}, "dim"), ({"beta": -1.0}, "beta"), ({"beta": float("nan")}, "beta"),
    ({"n_items": 5}, "min_len"), ({"val_users": 300, "test_users": 100}, "fewer than n_users"),
    ({"n_interactions": 100}, "n_interactions"), ({"item_zipf": -0.5}, "item_zipf"),
])
def test_bad_configs(bad, msg):
    with pytest.raises(DRError, match=msg):
        generate_latent(replace(SMALL, **bad))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_factor_cohesion_is_the_mean_pairwise_cosine(seed):
    rng = np.random.default_rng(seed)
    V, d = 30, 4
    F = rng.standard_normal((V, d))
    lengths = rng.integers(0, 6, size=rng.integers(1, 8))
    groups = Ragged.from_lengths(rng.integers(0, V, int(lengths.sum())), lengths)
    unit = F / np.linalg.norm(F, axis=1, keepdims=True)
    num = den = 0.0
    for i in range(len(groups)):
        g = groups[i]
        if len(g) < 2:
            continue
        cos = [unit[a] @ unit[b] for x, a in enumerate(g) for y, b in enumerate(g) if x != y]
        num += len(g) * np.mean(cos)
        den += len(g)
    assert factor_cohesion(groups, F) == pytest.approx(num / den if den else 0.0, abs=1e-9)


def test_factor_cohesion_extremes():
    F = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    pairs = np.array([2, 2])
    assert factor_cohesion(Ragged.from_lengths(np.array([0, 1, 2, 3]), pairs), F) == pytest.approx(1.0)
    assert factor_cohesion(Ragged.from_lengths(np.array([0, 2, 1, 3]), pairs), F) == pytest.approx(0.0)
    assert factor_cohesion(Ragged.from_lengths(np.array([0, 1]), np.array([1, 1])), F) == 0.0


def test_demo_tunes_ease_only_where_it_fits(small, monkeypatch):
    """`dr demo` tunes EASE where its items x items inverse fits and says why it left it out."""
    from deep_retrieval import demo
    from deep_retrieval.baselines import EASE

    ds, _ = small
    grids = {"item-cf": {"neighbours": [50], "shrink": [10.0]},
             "rp3beta": {"alpha": [0.5], "beta": [0.2], "neighbours": [100]}, "ease": {"l2": [200.0]}}
    lines = []
    fitted, picks = demo.tuned_baselines(ds, grids, lines.append)
    assert set(fitted) == set(picks) == {"item-cf", "rp3beta", "ease"}

    class SmallEASE(EASE):
        def __init__(self, l2: float = 500.0, max_items: int = 599, dtype: str = "float32"):
            super().__init__(l2, max_items, dtype)

    monkeypatch.setattr(demo, "EASE", SmallEASE)
    tuned = (("item-cf", demo.ItemCF), ("rp3beta", demo.RP3beta), ("ease", SmallEASE))
    monkeypatch.setattr(demo, "TUNED", tuned)
    lines.clear()
    fitted, picks = demo.tuned_baselines(ds, grids, lines.append)
    assert set(fitted) == set(picks) == {"item-cf", "rp3beta"}
    assert "demo: ease left out: 600 items is above its max_items (599; an items x items inverse)" in lines
