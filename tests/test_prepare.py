"""prepare / protocols: counts checked against independent plain-Python counts."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deep_retrieval.data.dataset import Dataset, Ragged
from deep_retrieval.data.prepare import prepare
from deep_retrieval.data.protocols import given_split, user_split
from deep_retrieval.data.readers import Interactions
from deep_retrieval.errors import DRError

DATA = Path(__file__).parents[2] / "shared" / "data"


def real(rel: str) -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} absent")
    return DATA / rel


def quiet(_line: str) -> None:
    pass


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def rows_of(r, users):
    return {int(u): r[i].tolist() for i, u in enumerate(users)}


# --------------------------------------------------------------------------- real data
def test_ml100k_user_split_matches_independent_count(tmp_path):
    path = real("ml-100k/u.data")
    out = tmp_path / "ds"
    lines = []
    ds = prepare(path, out, val_users=100, test_users=100, seed=3, log=lines.append)
    assert any("ml-100k" in s for s in lines)

    # independent: csv module + collections
    kept = defaultdict(list)  # user -> [(time, file index, item)]
    n_rows = n_pos = 0
    with open(path, newline="") as f:
        for i, (u, it, r, t) in enumerate(csv.reader(f, delimiter="\t")):
            n_rows += 1
            if float(r) >= 4.0:
                n_pos += 1
                kept[int(u)].append((int(t), i, int(it)))
    kept = {u: sorted(v) for u, v in kept.items() if len(v) >= 10}
    items = {it for v in kept.values() for _, _, it in v}
    c = ds.manifest["counts"]
    assert c["rows_read"] == n_rows == 100_000
    assert c["after_rating_filter"] == n_pos
    assert c["users"] == ds.n_users == len(kept)
    assert c["items"] == ds.n_items == len(items)
    assert c["after_user_filter"] == sum(len(v) for v in kept.values())
    assert ds.user_ids.tolist() == sorted(kept) and ds.item_ids.tolist() == sorted(items)

    evals = set()
    for split in (ds.val, ds.test):
        assert len(split) == 100
        for i, u in enumerate(split.users):
            seq = [it for _, _, it in kept[int(ds.user_ids[u])]]
            h = len(seq) // 2
            assert ds.item_ids[split.hist[i]].tolist() == seq[:h]
            assert ds.item_ids[split.truth[i]].tolist() == seq[h:]
            evals.add(int(ds.user_ids[u]))
    assert len(evals) == 200
    train = {u: v for u, v in kept.items() if u not in evals}
    assert c["train_users"] == len(train)
    assert c["train_interactions"] == sum(len(v) for v in train.values())
    assert c["train_examples"] == sum(len(v) - 1 for v in train.values())
    assert c["test_truth_items"] == sum(len(ds.test.truth[i]) for i in range(100))
    for i, u in enumerate(ds.train_users):
        seq = [it for _, _, it in train[int(ds.user_ids[u])]]
        assert ds.item_ids[ds.train[i]].tolist() == seq

    m = ds.manifest
    src = m["sources"][0]
    assert src["path"] == str(path.resolve()) and src["size"] == path.stat().st_size
    assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m["format"] == "ml-100k" and "u.data" in m["format_reason"]
    assert m["protocol"]["rating_filter"] == "rating >= 4 (default)"
    assert m["parameters"]["max_seq_len"] == 69 and m["parameters"]["seed"] == 3
    assert "time" in m["order"]

    back = Dataset.load(out)
    assert back.manifest["counts"] == m["counts"]
    assert np.array_equal(back.train.values, ds.train.values)
    assert np.array_equal(back.test.truth.offsets, ds.test.truth.offsets)


def test_ml100k_too_many_evaluation_users(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DRError, match=r"only 897 users .* val_users 1000 \+ test_users 1000"):
        prepare(real("ml-100k/u.data"), out, val_users=1000, test_users=1000, log=quiet)
    assert not out.exists()


@pytest.mark.parametrize("rel, eligible", [("ml-100k/u.data", 897), ("ml-latest-small/ratings.csv", 579)])
def test_default_evaluation_users_fit_every_small_set(tmp_path, rel, eligible):
    """The README's `dr prepare` defaults: min(1000, 10% of eligible users), recorded."""
    ds = prepare(real(rel), tmp_path / "ds", log=quiet)
    m = ds.manifest
    c = m["counts"]
    assert c["users"] == eligible
    assert c["val_users"] == c["test_users"] == eligible // 10 == len(ds.val) == len(ds.test)
    assert m["parameters"]["val_users"] == m["parameters"]["test_users"] == eligible // 10
    assert m["parameters"]["val_users_given"] is None
    assert f"default min(1000, 10% of the {eligible} eligible users)" in m["protocol"]["evaluation_users"]
    assert c["train_users"] == eligible - 2 * (eligible // 10)
    assert c["duplicates_removed"] == 0 and c["rows_dropped_missing_field"] == 0


def test_ml100k_with_duplicated_rows(tmp_path):
    """A copy of u.data with 20% of its rows repeated later in time: collapsed by default,
    to the same data set as the original; kept as repeat events on request."""
    src = real("ml-100k/u.data")
    rows = src.read_text().splitlines()
    rng = np.random.default_rng(0)
    dup = rng.choice(len(rows), size=len(rows) // 5, replace=False)
    later = []
    for i in dup:
        u, it, r, ts = rows[i].split("\t")
        later.append(f"{u}\t{it}\t{r}\t{int(ts) + 1000}")
    copy = write(tmp_path / "u.data", "\n".join(rows + later) + "\n")
    a = prepare(src, tmp_path / "a", seed=3, log=quiet)
    lines: list[str] = []
    b = prepare(copy, tmp_path / "b", seed=3, log=lines.append)
    kept_dups = sum(float(rows[i].split("\t")[2]) >= 4 for i in dup)
    assert b.manifest["counts"]["duplicates_removed"] == kept_dups > 0
    assert any(f"duplicates removed: {kept_dups:,}" in s for s in lines)
    for name in ("train", "val", "test"):
        ra = a.train if name == "train" else getattr(a, name).truth
        rb = b.train if name == "train" else getattr(b, name).truth
        assert np.array_equal(ra.values, rb.values) and np.array_equal(ra.offsets, rb.offsets)
    c = prepare(copy, tmp_path / "c", seed=3, keep_duplicates=True, log=quiet)
    assert c.manifest["counts"]["duplicates_removed"] == 0
    assert c.manifest["parameters"]["keep_duplicates"] is True
    cc, ca = c.manifest["counts"], a.manifest["counts"]
    assert cc["after_duplicates"] == cc["after_rating_filter"] == ca["after_rating_filter"] + kept_dups
    assert cc["users"] >= ca["users"]  # repeats count towards the user filter


def test_amazon_book_given_split_matches_independent_count(tmp_path):
    d = real("amazon-book")

    def lines(name):
        with open(d / name) as f:
            return {int(t[0]): [int(x) for x in t[1:]] for t in map(str.split, f) if t}

    tr, te = lines("train.txt"), lines("test.txt")
    ds = prepare([d / "train.txt", d / "test.txt"], tmp_path / "ab", protocol="given-split",
                 seed=1, log=quiet)  # fmt: skip
    c = ds.manifest["counts"]
    users = set(tr) | set(te)
    items = {i for v in (*tr.values(), *te.values()) for i in v}
    test_users = [u for u in sorted(te) if te[u]]
    assert c["users"] == len(users) == 70_679
    assert c["items"] == len(items)
    assert c["test_users"] == len(test_users) == 70_591
    assert c["test_truth_items"] == sum(len(v) for v in te.values()) == 193_920
    assert c["train_rows_read"] == sum(len(v) for v in tr.values()) == 652_514

    uid = ds.user_ids
    test = rows_of(ds.test.hist, ds.test.users), rows_of(ds.test.truth, ds.test.users)
    for u in test_users[:2000]:
        (du,) = np.flatnonzero(uid == u)
        assert ds.item_ids[test[0][du]].tolist() == tr[u]  # all training items, file order
        assert ds.item_ids[test[1][du]].tolist() == te[u]

    assert c["val_users"] == len(ds.val) == 1000
    held = 0
    train = rows_of(ds.train, ds.train_users)
    for i, u in enumerate(ds.val.users):
        full = tr[int(uid[u])]
        h, t = ds.item_ids[ds.val.hist[i]].tolist(), ds.item_ids[ds.val.truth[i]].tolist()
        assert len(full) >= 5 and len(t) == max(1, int(0.2 * len(full)))
        assert sorted(h + t) == sorted(full)
        assert h == [x for x in full if x in set(h)]  # file order kept
        assert ds.item_ids[train[int(u)]].tolist() == h  # held-out items left training
        held += len(t)
    assert c["val_held_out_items"] == held
    assert c["train_interactions"] == 652_514 - held
    n_rows = sum(1 for v in tr.values() if v)
    assert c["train_examples"] == 652_514 - held - n_rows


@pytest.mark.parametrize(
    "rel, kw, users",
    [
        ("ml-latest-small/ratings.csv", dict(val_users=100, test_users=100), 579),
        ("ml-1m/pairs.csv.gz", {}, 6_040),
        ("ml-1m/sample_100k_with_time.csv", dict(rating_col="label", val_users=900), 1_994),
        ("lastfm-2k/user_artists.dat", dict(val_users=100, test_users=100), 1_874),
    ],
)
def test_other_real_sets_user_split(tmp_path, rel, kw, users):
    ds = prepare(real(rel), tmp_path / "ds", log=quiet, **kw)
    c = ds.manifest["counts"]
    assert c["users"] == users
    assert c["train_users"] + c["val_users"] + c["test_users"] == users
    assert (
        c["train_interactions"]
        + c["val_history_items"]
        + c["val_truth_items"]
        + c["test_history_items"]
        + c["test_truth_items"]
        == c["after_user_filter"]
    )


def test_pairs_have_no_rating_and_no_time(tmp_path):
    ds = prepare(real("ml-1m/pairs.csv.gz"), tmp_path / "ds", log=quiet)
    m = ds.manifest
    assert m["counts"]["after_rating_filter"] == m["counts"]["rows_read"] == 1_000_209
    assert "no rating" in m["protocol"]["rating_filter"]
    assert "file order" in m["order"]


def test_sample_cannot_hold_1000_plus_1000(tmp_path):
    with pytest.raises(DRError, match=r"only 1994 users"):
        prepare(real("ml-1m/sample_100k_with_time.csv"), tmp_path / "ds", val_users=1000,
                test_users=1000, log=quiet)  # fmt: skip
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- small files
def test_ml_dat_prepare_and_str_ids_roundtrip(tmp_path):
    rows = [f"{u}::{i}::5::{100 - i}" for u in (1, 2, 3) for i in range(10 + u)]
    p = write(tmp_path / "ratings.dat", "\n".join(rows) + "\n")
    ds = prepare(p, tmp_path / "a", val_users=1, test_users=1, log=quiet)
    assert ds.manifest["format"] == "ml-dat" and ds.n_users == 3 and ds.n_items == 13
    # time runs backwards in the file, so each sequence is reversed
    assert ds.item_ids[ds.train[0]].tolist() == sorted(ds.item_ids[ds.train[0]].tolist())[::-1]

    q = write(tmp_path / "s.csv", "user,item\n" + "".join(f"u{k % 3},i{k}\n" for k in range(30)))
    ds = prepare(q, tmp_path / "b", val_users=1, test_users=1, log=quiet)
    assert ds.user_ids.tolist() == ["u0", "u1", "u2"]
    back = Dataset.load(tmp_path / "b")
    assert back.item_ids.tolist() == ds.item_ids.tolist()


def test_given_split_collapses_repeated_pairs_within_each_file():
    tr = Interactions(user=np.array([1, 1, 1, 1, 1, 1, 2, 2]),
                      item=np.array([10, 11, 10, 12, 13, 14, 10, 10]), time=None, rating=None,
                      source="t", order_note="", dropped_missing=2)  # fmt: skip
    te = Interactions(user=np.array([1, 1, 2]), item=np.array([20, 20, 11]), time=None, rating=None,
                      source="t", order_note="")  # fmt: skip
    ds, c = given_split(tr, te, val_users=0)
    assert c["train_duplicates_removed"] == 2 and c["test_duplicates_removed"] == 1
    assert c["train_rows_read"] == 10 and c["train_rows_dropped_missing_field"] == 2
    rows = {int(ds.user_ids[u]): ds.item_ids[ds.train[i]].tolist() for i, u in enumerate(ds.train_users)}
    assert rows == {1: [10, 11, 12, 13, 14], 2: [10]}  # first occurrences, file order
    truth = {int(ds.user_ids[u]): ds.item_ids[ds.test.truth[i]].tolist() for i, u in enumerate(ds.test.users)}
    assert truth == {1: [20], 2: [11]}
    with pytest.raises(DRError, match="user-split only"):
        prepare(["a", "b"], "out", protocol="given-split", keep_duplicates=True, log=quiet)


def test_given_split_small():
    tr = Interactions(
        user=np.array([5, 5, 5, 5, 5, 5, 7, 7, 9]),
        item=np.array([1, 2, 3, 4, 5, 6, 1, 2, 8]),
        time=None, rating=None, source="t", order_note="",
    )  # fmt: skip
    te = Interactions(user=np.array([7, 11, 5]), item=np.array([3, 9, 1]), time=None,
                      rating=None, source="t", order_note="")  # fmt: skip
    ds, c = given_split(tr, te, val_users=1, val_fraction=0.5, seed=0)
    assert ds.user_ids.tolist() == [5, 7, 9, 11] and ds.item_ids.tolist() == [
        1,
        2,
        3,
        4,
        5,
        6,
        8,
        9,
    ]
    assert ds.test.users.tolist() == [0, 1, 3]
    assert ds.test.hist.to_lists() == [[0, 1, 2, 3, 4, 5], [0, 1], []]
    assert c["test_users_without_history"] == 1
    assert ds.val.users.tolist() == [0] and len(ds.val.truth[0]) == 3
    assert sorted(ds.val.hist[0].tolist() + ds.val.truth[0].tolist()) == [0, 1, 2, 3, 4, 5]
    assert ds.train_users.tolist() == [0, 1, 2]
    assert ds.train[0].tolist() == ds.val.hist[0].tolist()
    with pytest.raises(DRError, match="only 1 users have >= 5"):
        given_split(tr, te, val_users=2)


# --------------------------------------------------------------------------- mistakes
def bad_inputs(tmp: Path):
    ok = write(tmp / "ok.csv", "user,item\n" + "".join(f"{k % 30},{k}\n" for k in range(600)))
    rated = write(
        tmp / "r.csv", "user,item,rating\n" + "".join(f"{k % 5},{k},2\n" for k in range(99))
    )
    return [
        (dict(inputs=tmp / "missing.csv"), "not found"),
        (dict(inputs=write(tmp / "empty.csv", "")), "empty"),
        (dict(inputs=ok, sep=";"), "wrong delimiter"),
        (dict(inputs=ok, rating_col="stars"), "no column 'stars'.*columns are user, item"),
        (dict(inputs=write(tmp / "u.data", "1\t2\t3\t4\nx\t2\t3\t4\n")), "non-numeric user id"),
        (dict(inputs=write(tmp / "t.txt", "0 1 2\n1 a\n")), "non-numeric item id"),
        (dict(inputs=write(tmp / "n.csv", "user,item,rating\n1,2,high\n")), "non-numeric rating"),
        (dict(inputs=write(tmp / "m.csv", "user,item,time\n1,2,noon\n")), "non-numeric time"),
        (dict(inputs=ok, fmt="movielens"), "unknown format"),
        (dict(inputs=ok, protocol="leave-one-out"), "unknown protocol"),
        (dict(inputs=[ok, ok]), "needs one input file"),
        (dict(inputs=ok, protocol="given-split"), r"needs exactly two input files \(train, test\)"),
        (dict(inputs=ok, val_users=20, test_users=10), "only 30 users .* val_users 20"),
        (dict(inputs=ok, min_user_interactions=21), "no user has >= 21"),
        (dict(inputs=ok, min_rating=3), "min_rating 3 given but .* no rating column"),
        (dict(inputs=rated, val_users=1, test_users=1), r"no interaction left after .*rating >= 4"),
        (dict(inputs=ok, min_user_interactions=1), "min_user_interactions must be >= 2"),
        (dict(inputs=[ok, ok], protocol="given-split", val_users=31), "only 30 users have >= 5"),
    ]


def test_bad_inputs_raise_and_leave_nothing(tmp_path):
    for kw, msg in bad_inputs(tmp_path):
        out = tmp_path / "out"
        with pytest.raises(DRError, match=msg):
            prepare(kw.pop("inputs"), out, log=quiet, **kw)
        assert not out.exists(), msg
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_same_seed_same_split_other_seed_other_users(tmp_path):
    p = write(tmp_path / "a.csv", "user,item,time\n" + "".join(f"{k % 40},{k % 17},{k % 7}\n"
                                                               for k in range(800)))  # fmt: skip
    a = prepare(p, tmp_path / "a", val_users=5, test_users=5, seed=0, log=quiet)
    b = prepare(p, tmp_path / "b", val_users=5, test_users=5, seed=0, log=quiet)
    c = prepare(p, tmp_path / "c", val_users=5, test_users=5, seed=1, log=quiet)
    assert np.array_equal(a.test.users, b.test.users) and np.array_equal(
        a.train.values, b.train.values
    )
    assert not np.array_equal(a.test.users, c.test.users)


# --------------------------------------------------------------------------- property
@st.composite
def logs(draw):
    n = draw(st.integers(1, 120))
    ints = st.lists(st.integers(0, 9), min_size=n, max_size=n)
    return (
        np.array(draw(ints)),  # users
        np.array(draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))),  # items
        np.array(draw(ints), dtype=np.float64),  # times, many ties
        np.array(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)), dtype=np.float64),
        draw(st.integers(2, 6)),  # min_user_interactions
        draw(st.integers(0, 2)),  # val users
        draw(st.integers(1, 2)),  # test users
        draw(st.integers(0, 3)),  # seed
        draw(st.booleans()),  # keep duplicates
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs())
def test_user_split_properties(log):
    user, item, time, rating, mui, nv, nt, seed, keep_dups = log
    inter = Interactions(user, item, time, rating, "h", "")
    # expected: kept rows per user, time order, file order breaking ties; unless keep_dups,
    # an item repeated by a user only at its first kept time
    kept = defaultdict(list)
    for i in range(len(user)):
        if rating[i] >= 4:
            kept[int(user[i])].append((time[i], i, int(item[i])))
    kept = {u: [it for *_, it in sorted(v)] for u, v in kept.items()}
    n_dups = 0
    if not keep_dups:
        n_dups = sum(len(v) - len(set(v)) for v in kept.values())
        kept = {u: list(dict.fromkeys(v)) for u, v in kept.items()}
    kept = {u: v for u, v in kept.items() if len(v) >= mui}
    kw = dict(min_user_interactions=mui, val_users=nv, test_users=nt, keep_duplicates=keep_dups, seed=seed)
    if len(kept) < nv + nt + 1:
        with pytest.raises(DRError):
            user_split(inter, **kw)
        return
    ds, c = user_split(inter, **kw)
    assert c["duplicates_removed"] == n_dups
    orig = lambda r: ds.item_ids[r].tolist()  # noqa: E731
    seen: Counter = Counter()
    for split in (ds.val, ds.test):
        for i, u in enumerate(split.users):
            seq = kept[int(ds.user_ids[u])]
            h = len(seq) // 2
            assert orig(split.hist[i]) == seq[:h] and orig(split.truth[i]) == seq[h:]
            seen.update((int(ds.user_ids[u]), x) for x in seq)
    for i, u in enumerate(ds.train_users):
        assert orig(ds.train[i]) == kept[int(ds.user_ids[u])]
        seen.update((int(ds.user_ids[u]), x) for x in kept[int(ds.user_ids[u])])
    v, t, tr = set(ds.val.users.tolist()), set(ds.test.users.tolist()), set(ds.train_users.tolist())
    assert len(v) == nv and len(t) == nt and not (v & t or v & tr or t & tr)
    assert v | t | tr == set(range(ds.n_users))
    assert seen == Counter((u, x) for u, seq in kept.items() for x in seq)  # each exactly once
    assert c["after_user_filter"] == sum(map(len, kept.values()))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), min_size=2, max_size=12), min_size=1, max_size=6),
       st.integers(1, 8), st.data())
def test_pad_others_is_the_row_without_the_target(rows, max_len, data):
    from deep_retrieval.data.dataset import pad_others

    r = Ragged.from_lists(rows)
    picks = [(i, data.draw(st.integers(0, len(row) - 1))) for i, row in enumerate(rows)]
    starts = np.array([r.offsets[i] for i, _ in picks])
    ends = np.array([r.offsets[i + 1] for i, _ in picks])
    pos = starts + np.array([j for _, j in picks])
    out, lengths = pad_others(r.values, starts, ends, pos, max_len)
    for b, (i, j) in enumerate(picks):
        want = (rows[i][:j] + rows[i][j + 1:])[-max_len:]
        assert lengths[b] == len(want)
        assert out[b, : len(want)].tolist() == want
        assert np.all(out[b, len(want):] == -1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 10**12), max_size=200))
def test_unique_sorted_equals_numpy_unique(xs):
    from deep_retrieval.data.dataset import unique_sorted

    x = np.asarray(xs, dtype=np.int64)
    np.testing.assert_array_equal(unique_sorted(x), np.unique(x))
