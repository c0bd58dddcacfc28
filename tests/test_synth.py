"""Tests of the synthetic generator (data/synth.py): fast, small configs only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from deep_retrieval.data.dataset import Dataset, Ragged
from deep_retrieval.data.synth import (
    Planted,
    SynthConfig,
    _zipf,
    cluster_purity,
    generate,
    planted_top,
    synth,
    top_list_spread,
)
from deep_retrieval.errors import DRError

SMALL = SynthConfig(
    n_items=2_000, n_users=800, n_interactions=30_000, val_users=100, test_users=100, seed=3
)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def _arrays(ds: Dataset) -> dict[str, np.ndarray]:
    out = {"train": ds.train.values, "train_offsets": ds.train.offsets, "tu": ds.train_users}
    for name in ("val", "test"):
        s = ds.split(name)
        out.update({f"{name}_u": s.users, f"{name}_h": s.hist.values, f"{name}_t": s.truth.values})
    return out


def _full_rows(ds: Dataset) -> list[np.ndarray]:
    """Every user's whole sequence, train rows and eval users (history + truth)."""
    rows = [ds.train[i] for i in range(len(ds.train))]
    for s in (ds.val, ds.test):
        rows += [np.concatenate([s.hist[i], s.truth[i]]) for i in range(len(s))]
    return rows


def test_deterministic_by_seed(small):
    ds, planted = small
    ds2, planted2 = generate(SMALL)
    a, b = _arrays(ds), _arrays(ds2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(planted.item_clusters, planted2.item_clusters)
    ds3, planted3 = generate(replace(SMALL, seed=4))
    assert not np.array_equal(planted.item_clusters, planted3.item_clusters)
    assert not np.array_equal(a["train"][:1000], _arrays(ds3)["train"][:1000])


def test_counts_and_users(small):
    ds, planted = small
    assert ds.n_items == SMALL.n_items and ds.n_users == SMALL.n_users
    assert len(ds.val) == 100 and len(ds.test) == 100
    users = np.concatenate([ds.train_users, ds.val.users, ds.test.users])
    np.testing.assert_array_equal(np.sort(users), np.arange(SMALL.n_users))  # a partition
    total = ds.manifest["counts"]["interactions"]
    assert 0.9 * SMALL.n_interactions <= total <= SMALL.n_interactions
    assert planted.n_clusters == SMALL.n_items // 50
    assert ds.manifest["synth"]["n_clusters"] == planted.n_clusters


def test_roundtrip_and_files(small, tmp_path):
    out = tmp_path / "synth"
    ds = synth(out, SMALL, log=lambda *_: None)
    assert sorted(p.name for p in out.iterdir()) == ["arrays.npz", "manifest.json", "planted.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporaries left
    back = Dataset.load(out)  # runs validate()
    for k, v in _arrays(ds).items():
        np.testing.assert_array_equal(v, _arrays(back)[k], err_msg=k)
    assert back.manifest["protocol"] == "user-split"
    assert back.manifest["order"] == "generated time order"
    assert back.manifest["synth"]["seed"] == SMALL.seed
    p = Planted.load(out)
    np.testing.assert_array_equal(p.item_clusters, small[1].item_clusters)
    np.testing.assert_array_equal(p.item_prob, small[1].item_prob)
    assert p.n_clusters == small[1].n_clusters


def test_error_leaves_nothing(tmp_path, monkeypatch):
    def boom(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Planted, "save", boom)
    with pytest.raises(OSError):
        synth(tmp_path / "synth", SMALL, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_item_clusters(small):
    _, planted = small
    ic = planted.item_clusters
    assert ic.shape == (SMALL.n_items, 3) and ic.dtype == np.int32
    n = (ic >= 0).sum(axis=1)
    assert n.min() >= 1 and n.max() <= 3 and (n >= 2).any()
    assert (ic[:, 0] >= 0).all() and ic.max() < planted.n_clusters
    # padding only at the end, clusters of one item distinct
    assert ((ic >= 0) == (np.arange(3) < n[:, None])).all()
    assert (ic[:, 0] != ic[:, 1]).all() and (ic[:, 1:][n == 3, 0] != ic[n == 3, 2]).all()
    assert (ic[n == 3, 0] != ic[n == 3, 2]).all()
    # every cluster has items
    assert len(np.unique(ic[:, 0])) == planted.n_clusters


def test_sequences_min_length_no_repeats(small):
    ds, _ = small
    rows = _full_rows(ds)
    assert min(len(r) for r in rows) >= SMALL.min_len
    assert all(len(np.unique(r)) == len(r) for r in rows)
    lengths = np.array([len(r) for r in rows])
    assert lengths.max() > 4 * np.median(lengths)  # heavy tail


def test_eval_split_at_half(small):
    ds, _ = small
    for s in (ds.val, ds.test):
        n = s.hist.lengths + s.truth.lengths
        np.testing.assert_array_equal(s.hist.lengths, n // 2)
        assert (n >= SMALL.min_len).all()


def test_popularity_long_tailed(small):
    ds, _ = small
    counts = np.sort(np.bincount(ds.train.values, minlength=ds.n_items))[::-1]
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.3  # top 10% of items take > 3x their share


def test_structure_learnable(small):
    """A user's truth items share clusters with their history far more often than chance."""
    ds, planted = small
    ic, C = planted.item_clusters, planted.n_clusters

    def hit_rate(hist: Ragged, truth: Ragged, owner: np.ndarray) -> float:
        # (user, cluster) pairs of each user's history, vs each truth item's clusters
        hc = ic[hist.values]  # (h, 3)
        hu = np.repeat(hist.row_ids(), 3)
        keys = np.unique(hu[hc.reshape(-1) >= 0] * C + hc.reshape(-1)[hc.reshape(-1) >= 0])
        tc = ic[truth.values]  # (t, 3)
        tu = owner[truth.row_ids()][:, None]
        hit = (np.isin(tu * C + tc, keys) & (tc >= 0)).any(axis=1)
        return float(hit.mean())

    s = ds.val
    same = hit_rate(s.hist, s.truth, np.arange(len(s)))
    other = hit_rate(s.hist, s.truth, np.roll(np.arange(len(s)), 1))  # someone else's history
    assert same > 0.8 and 1 - same < 0.5 * (1 - other), (same, other)  # misses halve at least


def test_cluster_purity_exact():
    ic = np.array([[0, -1, -1], [0, 1, -1], [1, -1, -1], [2, 0, 1]], dtype=np.int32)
    assert cluster_purity(Ragged.from_lists([[0, 1], [2]]), ic) == 1.0
    assert cluster_purity(Ragged.from_lists([[0, 2]]), ic) == 0.5
    # groups: {0,2} -> 1 of 2; {1,2,3} -> cluster 1 holds all 3; empty group ignored
    assert cluster_purity(Ragged.from_lists([[0, 2], [], [1, 2, 3]]), ic) == pytest.approx(4 / 5)
    assert cluster_purity(Ragged.from_lists([[], []]), ic) == 0.0
    assert cluster_purity(Ragged.from_lists([[0, 1, 2]]), ic[:, 0]) == pytest.approx(2 / 3)


def test_planted_purity_of_primary_clusters(small):
    _, planted = small
    ic = planted.item_clusters
    order = np.argsort(ic[:, 0], kind="stable")
    groups = Ragged.from_lengths(order, np.bincount(ic[:, 0]))
    assert cluster_purity(groups, ic) == 1.0
    rng = np.random.default_rng(0)
    shuffled = Ragged.from_lengths(rng.permutation(order), groups.lengths)
    assert cluster_purity(shuffled, ic) < 0.2


@pytest.mark.parametrize(
    "change",
    [
        {"n_items": 0},
        {"n_users": 0},
        {"val_users": 500, "test_users": 500},
        {"val_users": 900},
        {"n_interactions": 100},
        {"n_clusters": 5_000},
        {"drift": 1.5},
        {"noise": -0.1},
        {"item_zipf": float("nan")},
        {"user_alpha": 0.0},
        {"max_clusters_per_item": 0},
        {"distinct_user_clusters": True, "n_clusters": 2},  # 3 distinct slots out of 2
    ],
)
def test_bad_configs(change, tmp_path):
    cfg = replace(SMALL, **change)
    with pytest.raises(DRError):
        generate(cfg)
    with pytest.raises(DRError):
        synth(tmp_path / "x", cfg, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_tiny_corner_cases():
    # as many items as min_len: every user holds all of them
    ds, planted = generate(
        SynthConfig(n_items=10, n_users=20, n_interactions=200, val_users=2, test_users=2)
    )
    assert (ds.train.lengths == 10).all() and planted.n_clusters == 2
    # one cluster, one cluster per item
    ds, planted = generate(replace(SMALL, n_clusters=1, max_clusters_per_item=1))
    assert planted.item_clusters.shape == (SMALL.n_items, 1) and (planted.item_clusters == 0).all()


# ------------------------------------------------------------------- personal preset
PERSONAL = SynthConfig.personal(10_000, seed=5)


@pytest.fixture(scope="module")
def personal():
    return generate(PERSONAL)


def test_personal_sizes(personal):
    ds, planted = personal
    cfg = PERSONAL
    assert (cfg.n_items, cfg.n_users, cfg.n_interactions, cfg.n_clusters) == (10_000, 2_000, 100_000, 250)
    assert (len(ds.val), len(ds.test)) == (200, 200)
    assert planted.item_clusters.shape == (10_000, 1)
    np.testing.assert_array_equal(np.bincount(planted.item_clusters[:, 0]), np.full(250, 40))
    big = SynthConfig.personal(1_500_000)
    sizes = (big.n_users, big.n_interactions, big.n_clusters, big.val_users)
    assert sizes == (300_000, 15_000_000, 37_500, 1000)
    assert SynthConfig.personal(1000, community_size=25).n_clusters == 40
    # six distinct communities per user, no drift
    slots = np.sort(planted.user_start, axis=1)
    assert slots.shape == (2_000, 6) and (np.diff(slots, axis=1) > 0).all()
    np.testing.assert_array_equal(planted.user_start, planted.user_end)


def test_personal_deterministic(personal):
    ds, planted = personal
    ds2, planted2 = generate(PERSONAL)
    for k, v in _arrays(ds).items():
        np.testing.assert_array_equal(v, _arrays(ds2)[k], err_msg=k)
    np.testing.assert_array_equal(planted.user_start, planted2.user_start)
    _, planted3 = generate(replace(PERSONAL, seed=6))
    assert not np.array_equal(planted.user_start, planted3.user_start)


def test_item_prob_is_the_configured_zipf(personal, small):
    for (_, planted), s in ((personal, PERSONAL.item_zipf), (small, SMALL.item_zipf)):
        ic, prob = planted.item_clusters, planted.item_prob
        assert ((prob > 0) == (ic >= 0)).all()
        for c in (0, 7, planted.n_clusters - 1):  # members' masses, sorted: Zipf over their ranks
            got = np.sort(prob[ic == c])[::-1]
            np.testing.assert_allclose(got, _zipf(len(got), s))


def _slopes(ds, planted) -> tuple[float, float]:
    """Log-log slopes of interaction counts: by rank inside a community, and across communities."""
    counts = np.bincount(ds.train.values, minlength=ds.n_items)
    ic = planted.item_clusters[:, 0]
    order = np.lexsort((-planted.item_prob[:, 0], ic))
    sizes = np.bincount(ic)
    rank = np.empty(len(ic), dtype=np.int64)
    rank[order] = np.arange(len(ic)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    by_rank = np.bincount(rank, weights=counts)  # (40,) summed over communities
    by_community = np.bincount(ic, weights=counts)[np.argsort(-planted.cluster_prob, kind="stable")]

    def slope(y):
        return np.polyfit(np.log(np.arange(1, len(y) + 1)), np.log(y), 1)[0]

    return slope(by_rank), slope(by_community)


def test_personal_skew_as_configured():
    steep = generate(replace(PERSONAL, item_zipf=1.0, cluster_zipf=0.3))
    flat = generate(replace(PERSONAL, item_zipf=0.2, cluster_zipf=1.0))
    inside_steep, across_steep = _slopes(*steep)
    inside_flat, across_flat = _slopes(*flat)
    # across communities the counts follow the configured exponent
    assert abs(across_steep + 0.3) < 0.1 and abs(across_flat + 1.0) < 0.1, (across_steep, across_flat)
    # inside, "no repeats" caps a user's draws of the top items, so the counts are flatter
    # than the configured exponent (1.0 -> ~0.7), but still ordered by it
    assert -1.0 < inside_steep < -0.6 and -0.2 < inside_flat < -0.1, (inside_steep, inside_flat)


def test_top_list_spread_exact():
    lists = np.array([[0, 1, 2], [0, 1, 3], [0, 4, -1]])
    # by occurrence in the lists: 0 (3), 1 (2), then 2, 3, 4 once each; top 2 = {0, 1}
    assert top_list_spread(lists, top=2) == {"distinct": 5, "share_in_most_common": 5 / 8}
    counts = np.array([0, 0, 9, 8, 7])  # by training counts the top 2 are items 2 and 3
    assert top_list_spread(lists, counts, top=2) == {"distinct": 5, "share_in_most_common": 2 / 8}
    assert top_list_spread(lists, counts, top=5)["share_in_most_common"] == 1.0
    assert top_list_spread(np.array([[0, 0], [0, 0]]), top=1) == {"distinct": 1, "share_in_most_common": 1.0}
    assert top_list_spread(np.full((2, 3), -1)) == {"distinct": 0, "share_in_most_common": 0.0}


def _affinity(planted: Planted, noise: float, users: np.ndarray) -> np.ndarray:
    """(n, V) the planted affinity by its formula, over every item (the oracle of planted_top)."""
    ic, prob = planted.item_clusters, planted.item_prob
    glob = (np.where(ic >= 0, planted.cluster_prob[ic], 0.0) * prob).sum(axis=1)  # (V,)
    aff = np.tile(noise * glob, (len(users), 1))
    for i, u in enumerate(users):
        for c, w in zip(planted.user_end[u], planted.user_weights[u], strict=True):
            aff[i] += (1 - noise) * w * (prob * (ic == c)).sum(axis=1)
    return aff


@pytest.mark.parametrize("which", ["small", "personal"])
def test_planted_top_matches_brute_force(which, small, personal):
    (_, planted), cfg = (small, SMALL) if which == "small" else (personal, PERSONAL)
    users = np.arange(0, 800, 37)
    for k in (10, 200):
        got = planted_top(planted, cfg.noise, k, users)
        aff = _affinity(planted, cfg.noise, users)
        want = np.argsort(-aff, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(got, want)
    assert planted_top(planted, cfg.noise, 5).shape == (cfg.n_users, 5)


def test_planted_top_is_personal(personal, small):
    ds, planted = personal
    top = planted_top(planted, PERSONAL.noise, 200, ds.test.users)
    spread = top_list_spread(top, ds.item_counts())
    assert spread["share_in_most_common"] < 0.3 and spread["distinct"] > 5_000, spread
    # the default generator (clusters of ~50 items, skewed, 3 slots) is far less personal
    ds, planted = small
    top = planted_top(planted, SMALL.noise, 200, ds.test.users)
    assert top_list_spread(top, ds.item_counts())["share_in_most_common"] > 0.3
