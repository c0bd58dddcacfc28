"""Time replay (data/replay.py): exact cuts on a hand-made log, an oracle over random logs,
no future leakage, persistence, errors, and the counts on the real time-stamped sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_retrieval.data.dataset import Dataset
from deep_retrieval.data.readers import Interactions, read
from deep_retrieval.data.replay import Replay, time_replay
from deep_retrieval.data.synth import SynthConfig, generate
from deep_retrieval.errors import DRError
from deep_retrieval.model import DeepRetrieval
from tests.test_model import quiet, tiny_config

DATA = Path(__file__).parents[2] / "shared" / "data"

# (user, item, time): base = the first 6 by time, chunk 0 = times 7-9, chunk 1 = 10-12;
# (1, 10, 8.5) repeats user 1's item 10 and is dropped; file order is shuffled.
LOG = [
    (1, 10, 1), (2, 10, 2), (1, 11, 3), (2, 12, 4), (3, 10, 5), (1, 12, 6),
    (1, 13, 7), (2, 11, 8), (1, 10, 8.5), (4, 10, 9),
    (1, 14, 10), (2, 13, 11), (3, 11, 12),
]  # fmt: skip


def inter_of(rows, order=None, rating=None) -> Interactions:
    a = np.array(rows, dtype=np.float64)
    order = np.arange(len(a)) if order is None else np.asarray(order)
    a = a[order]
    return Interactions(
        user=a[:, 0].astype(np.int64),
        item=a[:, 1].astype(np.int64),
        time=a[:, 2],
        rating=None if rating is None else np.asarray(rating, dtype=np.float64)[order],
        source="test log",
        order_note="test",
    )


@pytest.fixture(scope="module")
def hand():
    order = np.random.default_rng(0).permutation(len(LOG))
    return time_replay(inter_of(LOG, order), chunks=2, min_history=1, val_users=0)


def lists(r) -> list[list[int]]:
    return r.to_lists()


def test_hand_made_cut(hand):
    r = hand
    np.testing.assert_array_equal(r.bounds, [7, 10, np.inf])
    np.testing.assert_array_equal(r.offsets, [6, 9, 12])
    np.testing.assert_array_equal(r.time, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    c0 = r.chunk(0)
    assert (c0.user.tolist(), c0.item.tolist(), c0.time.tolist()) == ([1, 2, 4], [13, 11, 10], [7, 8, 9])
    c1 = r.chunk(1)
    assert (c1.user.tolist(), c1.item.tolist()) == ([1, 2, 3], [14, 13, 11])
    assert len(r.upto(-1)) == 6 and len(r.upto(0)) == 9 and len(r.upto(1)) == 12
    c = r.manifest["counts"]
    assert (c["rows_read"], c["after_dropping_repeats"], c["base_interactions"]) == (13, 12, 6)
    assert [(x["interactions"], x["users"], x["new_items"], x["interactions_on_new_items"])
            for x in c["chunks"]] == [(3, 3, 1, 1), (3, 3, 1, 2)]  # item 13 is new in both


def test_hand_made_evals(hand):
    e0, e1 = hand.evals
    assert e0.users.tolist() == [1, 2]  # user 4 has no history before chunk 0
    assert lists(e0.hist) == [[10, 11, 12], [10, 12]] and lists(e0.truth) == [[13], [11]]
    assert e0.truth_new.tolist() == [True, False]
    assert e1.users.tolist() == [1, 2, 3]
    assert lists(e1.hist) == [[10, 11, 12, 13], [10, 12, 11], [10]]
    assert lists(e1.truth) == [[14], [13], [11]] and e1.truth_new.tolist() == [True, True, False]
    c = hand.manifest["counts"]["chunks"]
    assert [(x["eval_users"], x["eval_users_cold"], x["eval_truth_new_items"]) for x in c] == [
        (2, 1, 1), (3, 0, 2)]  # fmt: skip
    # a longer minimum history drops user 3 (1 earlier interaction) and user 2 before chunk 0
    r = time_replay(inter_of(LOG), chunks=2, min_history=3, val_users=0)
    assert r.evals[0].users.tolist() == [1] and r.evals[1].users.tolist() == [1, 2]


def test_hand_made_datasets(hand):
    base = hand.base
    assert base.item_ids.tolist() == [10, 11, 12] and base.user_ids.tolist() == [1, 2, 3]
    assert base.train_users.tolist() == [0, 1, 2]
    assert lists(base.train) == [[0, 1, 2], [0, 2], [0]]
    assert len(base.val) == 0 and len(base.test) == 0
    full = hand.dataset(0)
    assert full.item_ids.tolist() == [10, 11, 12, 13] and full.user_ids.tolist() == [1, 2, 3, 4]
    assert lists(full.train) == [[0, 1, 2, 3], [0, 2, 1], [0], [0]]
    b2 = hand.dataset(-1)
    assert lists(b2.train) == lists(base.train) and b2.item_ids.tolist() == base.item_ids.tolist()
    with pytest.raises(DRError, match="chunk 2 out of range"):
        hand.dataset(2)
    with pytest.raises(DRError, match="out of range"):
        hand.chunk(-1)


def test_validation_users_held_out():
    r = time_replay(inter_of(LOG), chunks=2, min_history=2, val_users=1, seed=0)
    # eligible: users with >= 2 base interactions (1: three, 2: two); one of them is drawn
    (v,) = r.val_users.tolist()
    assert v in (1, 2)
    base_rows = {1: [10, 11, 12], 2: [10, 12]}[v]
    h = len(base_rows) // 2
    assert lists(r.val_hist) == [base_rows[:h]] and lists(r.val_truth) == [base_rows[h:]]
    assert v not in r.user.tolist()  # in no chunk, no training row
    assert all(v not in e.users.tolist() for e in r.evals)
    ds = r.base
    assert ds.user_ids[ds.val.users].tolist() == [v]
    assert ds.item_ids[ds.val.hist.values].tolist() == base_rows[:h]
    assert v not in ds.user_ids[ds.train_users].tolist()


def test_rating_filter_and_ties():
    rating = [5, 5, 5, 5, 5, 5, 5, 1, 5, 5, 5, 5, 5]  # drops (2, 11, 8)
    r = time_replay(inter_of(LOG, rating=rating), chunks=2, min_history=1, val_users=0)
    assert r.manifest["counts"]["after_rating_filter"] == 12
    assert (2, 11) not in set(zip(r.user.tolist(), r.item.tolist(), strict=True))
    assert "rating >= 4 (default)" in r.manifest["protocol"]["rating_filter"]
    # equal times at a boundary stay together: the base ends before the whole tie
    tied = [(1, 10, 1), (2, 11, 1), (1, 12, 2), (2, 13, 2), (3, 10, 2), (3, 11, 3)]
    r = time_replay(inter_of(tied), chunks=1, min_history=1, val_users=0)  # position 3 has time 2
    np.testing.assert_array_equal(r.offsets, [2, 6])
    np.testing.assert_array_equal(r.bounds, [2, np.inf])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"chunks": 0}, "chunks must be >= 1"),
        ({"chunks": 2, "base_fraction": 1.0}, "base_fraction"),
        ({"chunks": 2, "min_history": 0}, "min_history"),
        ({"chunks": 2, "val_users": 3}, "fewer than val_users 3"),
        ({"chunks": 2, "min_rating": 4.0}, "no rating column"),
        ({"chunks": 20}, "too few"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(DRError, match=match):
        time_replay(inter_of(LOG), **{"val_users": 0, **kw})


def test_no_time_and_empty_chunks():
    no_time = inter_of(LOG)
    no_time.time = None
    with pytest.raises(DRError, match="needs a time column"):
        time_replay(no_time, chunks=2)
    no_time.time = np.where(np.arange(len(LOG)) == 3, np.nan, inter_of(LOG).time)
    with pytest.raises(DRError, match="missing values"):
        time_replay(no_time, chunks=2)
    same = [(u, 10 + u, 5.0) for u in range(1, 4)] + [(u, 20 + u, 9.0) for u in range(1, 9)]
    with pytest.raises(DRError, match="chunk 0 is empty"):
        time_replay(inter_of(same), chunks=2, min_history=1, val_users=0)
    with pytest.raises(DRError, match="base period is empty"):
        time_replay(inter_of([(1, 1, 1.0), (1, 2, 1.0), (2, 3, 2.0)]), chunks=1, val_users=0)


def test_text_ids(tmp_path):
    base = inter_of(LOG)
    text = Interactions(
        user=np.array([f"u{x}" for x in base.user]), item=np.array([f"i{x}" for x in base.item]),
        time=base.time, rating=None, source="text ids", order_note="test",
    )  # fmt: skip
    r = time_replay(text, chunks=2, min_history=1, val_users=0)
    r.save(tmp_path / "r")
    back = Replay.load(tmp_path / "r")
    assert back.evals[1].users.tolist() == ["u1", "u2", "u3"]
    assert lists(back.evals[1].truth) == [["i14"], ["i13"], ["i11"]]
    assert back.chunk(0).item.tolist() == ["i13", "i11", "i10"]
    assert back.base.item_ids.tolist() == ["i10", "i11", "i12"]


# ---------------------------------------------------------------------------- oracle
def oracle(rows, chunks, base_fraction, min_history, val):
    """The protocol in plain Python: (stream rows, offsets, evals as (users, hists, truths, new))."""
    ordered = sorted(range(len(rows)), key=lambda i: (rows[i][2], i))
    seen, log = set(), []
    for i in ordered:
        u, it, t = rows[i]
        if (u, it) not in seen:
            seen.add((u, it))
            log.append((u, it, t))
    n = len(log)
    times = [t for _, _, t in log]
    p0 = min(max(int(base_fraction * n), 1), n - 1)
    bounds = [times[p0 + (j * (n - p0)) // chunks] for j in range(chunks)] + [np.inf]
    base_items = {it for u, it, t in log if t < bounds[0]}
    stream = [r for r in log if r[0] not in val]
    offsets = [sum(t < b for _, _, t in stream) for b in bounds]
    evals = []
    for j in range(chunks):
        users = sorted({u for u, _, t in stream if bounds[j] <= t < bounds[j + 1]})
        hist = {u: [it for uu, it, t in stream if uu == u and t < bounds[j]] for u in users}
        users = [u for u in users if len(hist[u]) >= min_history]
        truth = {u: [it for uu, it, t in stream if uu == u and bounds[j] <= t < bounds[j + 1]] for u in users}
        new = [it not in base_items for u in users for it in truth[u]]
        evals.append((users, [hist[u] for u in users], [truth[u] for u in users], new))
    return stream, offsets, evals


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(0, 15)), min_size=4, max_size=60
    ),
    chunks=st.integers(1, 3),
    base_fraction=st.sampled_from([0.3, 0.5, 0.7]),
    min_history=st.integers(1, 3),
    val_users=st.integers(0, 1),
)
def test_matches_oracle(rows, chunks, base_fraction, min_history, val_users):
    try:
        r = time_replay(inter_of(rows), chunks, base_fraction, min_history, val_users)
    except DRError as e:  # ties can empty the base or a chunk; too few rows
        assert any(s in str(e) for s in ("empty", "too few", "fewer than val_users")), e
        return
    stream, offsets, evals = oracle(rows, chunks, base_fraction, min_history, set(r.val_users.tolist()))
    assert list(zip(r.user.tolist(), r.item.tolist(), r.time.tolist(), strict=True)) == stream
    assert r.offsets.tolist() == offsets
    for e, (users, hist, truth, new) in zip(r.evals, evals, strict=True):
        assert e.users.tolist() == users
        assert lists(e.hist) == hist and lists(e.truth) == truth and e.truth_new.tolist() == new
    r.base.validate()


def assert_no_leakage(r: Replay) -> None:
    """Every history interaction strictly before every truth interaction of its user, and the
    truth inside its chunk's time bounds (times looked up in the log: pairs are unique)."""
    when = dict(zip(zip(r.user.tolist(), r.item.tolist(), strict=True), r.time.tolist(), strict=True))
    for e in r.evals:
        lo, hi = r.bounds[e.chunk], r.bounds[e.chunk + 1]
        for i, u in enumerate(e.users.tolist()):
            h = [when[(u, it)] for it in e.hist[i].tolist()]
            t = [when[(u, it)] for it in e.truth[i].tolist()]
            assert h and t and max(h) < min(t) and lo <= min(t) and max(t) < hi
            assert h == sorted(h) and t == sorted(t)


def test_no_leakage_hand(hand):
    assert_no_leakage(hand)


# ---------------------------------------------------------------------------- persistence
def test_save_load_roundtrip(hand, tmp_path):
    out = tmp_path / "replay"
    hand.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["arrays.npz", "base", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["replay"]  # no temporaries left
    back = Replay.load(out)
    for name in ("user", "item", "time", "offsets", "bounds", "val_users"):
        np.testing.assert_array_equal(getattr(back, name), getattr(hand, name), err_msg=name)
    for a, b in zip(back.evals, hand.evals, strict=True):
        assert a.chunk == b.chunk and a.users.tolist() == b.users.tolist()
        assert lists(a.hist) == lists(b.hist) and lists(a.truth) == lists(b.truth)
        assert a.truth_new.tolist() == b.truth_new.tolist()
    assert lists(back.base.train) == lists(hand.base.train)
    assert lists(Dataset.load(out / "base").train) == lists(hand.base.train)  # `dr train DIR/base`
    m = json.loads((out / "manifest.json").read_text())
    assert m["parameters"]["chunks"] == 2 and len(m["counts"]["chunks"]) == 2
    hand.save(out)  # a replay replaces a replay
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DRError, match="not replacing"):
        hand.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_load_errors(tmp_path, hand):
    with pytest.raises(DRError, match="not found"):
        Replay.load(tmp_path / "nothing")
    hand.base.save(tmp_path / "ds")
    with pytest.raises(DRError, match="not a time-replay"):
        Replay.load(tmp_path / "ds")
    hand.save(tmp_path / "r")
    (tmp_path / "r" / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(DRError, match="corrupt"):
        Replay.load(tmp_path / "r")


@pytest.mark.slow  # ~7 s alone, a minute on a loaded machine (the trainer's first call compiles)
def test_base_trains():
    """The base data set goes through the existing trainer as is (tiny model, one epoch)."""
    ds, _ = generate(SynthConfig(n_items=300, n_users=200, n_interactions=4_000, val_users=1, test_users=1))
    rows = [(u, int(it), float(t)) for u in range(len(ds.train)) for t, it in enumerate(ds.train[u])]
    r = time_replay(inter_of(rows), chunks=2, min_history=2, val_users=20)
    model = DeepRetrieval(tiny_config()).fit(r.base, log=quiet)
    ids, _ = model.recommend(r.base.val.hist, 5)
    assert ids.shape == (20, 5) and (ids < r.base.n_items).all()


# ---------------------------------------------------------------------------- real data
def real(rel: str) -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} absent")
    return DATA / rel


@pytest.mark.parametrize(
    "rel, counts",
    [
        # (after the rating filter, base interactions, per chunk: interactions, eval users, new items)
        ("ml-100k/u.data", (55_375, 25_368, [(6_869, 74, 76), (6_905, 91, 48), (6_783, 92, 43),
                                             (6_901, 72, 49)])),
        ("ml-latest-small/ratings.csv", (48_580, 21_246, [(6_015, 26, 562), (6_073, 20, 635),
                                                          (6_072, 10, 581), (6_073, 28, 775)])),
        ("ml-1m/sample_100k_with_time.csv", (57_448, 27_967, [(7_178, 67, 107), (7_181, 61, 113),
                                                             (7_166, 179, 71), (7_125, 616, 83)])),
    ],
)  # fmt: skip
def test_real_sets(rel, counts):
    r = time_replay(read(real(rel)), chunks=4)
    c = r.manifest["counts"]
    per_chunk = [(x["interactions"], x["eval_users"], x["new_items"]) for x in c["chunks"]]
    assert (c["after_rating_filter"], c["base_interactions"], per_chunk) == counts
    assert_no_leakage(r)
    assert np.all(np.diff(r.time) >= 0) and r.offsets[-1] == len(r.user)
    new_truth = [x["eval_truth_new_items"] for x in c["chunks"]]
    assert new_truth == [int(e.truth_new.sum()) for e in r.evals]
    assert np.isin(r.evals[0].truth.values, r.base.item_ids).tolist() == (~r.evals[0].truth_new).tolist()
