"""Split protocols: turn ``Interactions`` into a prepared ``Dataset``. Fully vectorised.

``user_split``  the paper's protocol (from TDM/JTM): filter, draw validation and test
                users, split each evaluation user's time-ordered behaviours in half.
``given_split`` fixed train/test files (KGAT/LightGCN style), with a validation split
                held out of the training rows.

Both return ``(Dataset, counts)``; ``Dataset.manifest["protocol"]`` describes what was
done (filters, duplicates, ordering, how validation was drawn) and ``counts`` holds the
numbers: rows read, rows dropped for a missing field, duplicates removed, users and items
after each step, and the split sizes. Validation / test user counts left as None default
to ``default_eval_users(n) = min(1000, n // 10)`` of the n eligible users (at least 1 test
user); the resolved numbers are in ``counts``.
"""

from __future__ import annotations

import numpy as np

from ..errors import DRError
from .dataset import Dataset, Ragged, Split
from .readers import Interactions


def _gather(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Ragged:
    """Rows ``values[starts[i] : starts[i] + lengths[i]]`` as one Ragged, vectorised."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return Ragged(values[idx].astype(np.int64, copy=False), offsets)


def _factorize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)``, in O(n) for integer ids of moderate range."""
    if x.dtype.kind in "iu" and len(x):
        lo, hi = int(x.min()), int(x.max())
        if hi - lo <= max(4 * len(x), 1 << 20):
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[x - lo] = True
            rank = np.cumsum(present, dtype=np.int64) - 1
            return np.flatnonzero(present).astype(x.dtype) + lo, rank[x - lo]
    uniq, inv = np.unique(x, return_inverse=True)
    return uniq, inv.reshape(-1).astype(np.int64, copy=False)


def default_eval_users(n_eligible: int) -> int:
    """min(1000, 10% of the eligible users): the validation / test users when not given."""
    return min(1000, n_eligible // 10)


def _first_occurrences(users: np.ndarray, items: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """Sorted row positions of the first occurrence of each (user, item) pair in time order
    (stable: file order breaks ties; without times, file order)."""
    _, u = _factorize(users)
    _, i = _factorize(items)
    key = u * (int(i.max(initial=0)) + 1) + i  # (n,) one int64 per pair
    order = np.arange(len(key)) if times is None else np.argsort(times, kind="stable")
    k = key[order]
    o2 = np.argsort(k, kind="stable")  # equal keys keep time order
    ks = k[o2]
    return np.sort(order[o2[np.r_[True, ks[1:] != ks[:-1]]]])


def _dedupe(inter: Interactions, rows: np.ndarray) -> np.ndarray:
    """``rows`` (positions in ``inter``) without repeated (user, item) pairs: first in time order."""
    times = None if inter.time is None else inter.time[rows]
    return rows[_first_occurrences(inter.user[rows], inter.item[rows], times)]


def _grouped(users: np.ndarray, items: np.ndarray, n_users: int, keys=None):
    """Sort interactions by user (then by ``keys``), stably: file order breaks ties.

    Returns ``(values, offsets, lengths)``: user u's items are ``values[offsets[u]:offsets[u+1]]``.
    """
    order = np.arange(len(users)) if keys is None else np.argsort(keys, kind="stable")
    order = order[np.argsort(users[order], kind="stable")]
    lengths = np.bincount(users, minlength=n_users).astype(np.int64)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return items[order].astype(np.int64, copy=False), offsets, lengths


def _half_split(values, offsets, lengths, users) -> Split:
    """History = first floor(n/2) behaviours of each user, truth = the rest."""
    n = lengths[users]
    h = n // 2
    return Split(
        users=np.asarray(users, dtype=np.int64),
        hist=_gather(values, offsets[users], h),
        truth=_gather(values, offsets[users] + h, n - h),
    )


def user_split(
    inter: Interactions,
    *,
    min_rating: float | None = None,
    min_user_interactions: int = 10,
    val_users: int | None = None,
    test_users: int | None = None,
    keep_duplicates: bool = False,
    seed: int = 0,
) -> tuple[Dataset, dict]:
    """The paper's protocol (TDM/JTM): filter, draw evaluation users, split their sequences.

    1. keep ``rating >= min_rating`` (None: 4.0 when the data has ratings, no filter when not);
       then, unless ``keep_duplicates``, keep only the first kept occurrence in time order of
       each (user, item) pair (with it, repeats stay as repeat events);
    2. keep users with ``>= min_user_interactions`` kept interactions;
    3. dense ids: remaining items (and users) sorted by original id;
    4. ``val_users`` and ``test_users`` disjoint random users (``default_rng(seed)``; None:
       ``default_eval_users`` of the users left, at least 1 test user); all others are
       training users, one training row each;
    5. every user's behaviours sorted by time (stable: file order breaks ties; without a
       time column file order is kept); an evaluation user's first floor(n/2) behaviours
       are the history, the rest the ground truth.
    """
    if min_user_interactions < 2:
        raise DRError(
            f"min_user_interactions must be >= 2 so every evaluation user has a history and a "
            f"ground truth (got {min_user_interactions})"
        )
    if (val_users is not None and val_users < 0) or (test_users is not None and test_users < 1):
        raise DRError(f"need val_users >= 0 and test_users >= 1 (got {val_users}, {test_users})")
    counts: dict = {
        "rows_read": len(inter) + inter.dropped_missing,
        "rows_dropped_missing_field": inter.dropped_missing,
    }
    protocol: dict = {"name": "user-split"}

    # 1. rating filter
    keep = np.ones(len(inter), dtype=bool)
    if inter.rating is None:
        if min_rating is not None:
            raise DRError(f"min_rating {min_rating} given but {inter.source} has no rating column")
        protocol["rating_filter"] = "none (the data has no rating column)"
    else:
        threshold = 4.0 if min_rating is None else float(min_rating)
        keep = inter.rating >= threshold
        protocol["rating_filter"] = f"rating >= {threshold:g}" + (
            " (default)" if min_rating is None else ""
        )
    counts["after_rating_filter"] = int(keep.sum())
    if not keep.any():
        raise DRError(
            f"no interaction left after the filter {protocol['rating_filter']} "
            f"({len(inter)} rows read)"
        )
    if keep_duplicates:
        counts["duplicates_removed"] = 0
        protocol["duplicates"] = "kept: a repeated (user, item) pair is a repeat event"
    else:
        rows = _dedupe(inter, np.flatnonzero(keep))
        counts["duplicates_removed"] = int(keep.sum()) - len(rows)
        keep = np.zeros(len(inter), dtype=bool)
        keep[rows] = True
        protocol["duplicates"] = (
            "collapsed: each (user, item) pair kept once, its first kept occurrence in time order"
        )
    counts["after_duplicates"] = int(keep.sum())

    # 2. user filter
    u_orig, u_inv = _factorize(inter.user[keep])
    per_user = np.bincount(u_inv, minlength=len(u_orig))
    counts["users_before_user_filter"] = len(u_orig)
    big = per_user >= min_user_interactions
    row_keep = np.flatnonzero(keep)[big[u_inv]]
    protocol["user_filter"] = f"users with >= {min_user_interactions} kept interactions"
    counts["after_user_filter"] = len(row_keep)
    if len(row_keep) == 0:
        raise DRError(
            f"no user has >= {min_user_interactions} interactions after the filter "
            f"{protocol['rating_filter']} (largest: {int(per_user.max())})"
        )

    # 3. dense ids over what remains
    user_ids = u_orig[big]  # still sorted by original id
    users = (np.cumsum(big, dtype=np.int64) - 1)[u_inv[big[u_inv]]]
    item_ids, items = _factorize(inter.item[row_keep])
    n_users = len(user_ids)
    counts["users"], counts["items"] = n_users, len(item_ids)

    # 4. evaluation users
    rule = f"min(1000, 10% of the {n_users} eligible users)"
    how = {
        "val": "given" if val_users is not None else "default " + rule,
        "test": "given" if test_users is not None else "default " + rule + ", at least 1",
    }
    val_users = default_eval_users(n_users) if val_users is None else val_users
    test_users = max(1, default_eval_users(n_users)) if test_users is None else test_users
    if n_users < val_users + test_users + 1:
        raise DRError(
            f"only {n_users} users remain after the filters, but val_users {val_users} + "
            f"test_users {test_users} + at least 1 training user are needed; "
            "ask for fewer evaluation users"
        )
    perm = np.random.default_rng(seed).permutation(n_users)
    val_u = np.sort(perm[:val_users])
    test_u = np.sort(perm[val_users : val_users + test_users])
    train_u = np.sort(perm[val_users + test_users :])
    protocol["evaluation_users"] = (
        f"{val_users} validation ({how['val']}) and {test_users} test users ({how['test']}) drawn "
        f"without replacement by numpy default_rng({seed}).permutation; all other users train"
    )

    # 5. time order and the half split
    times = None if inter.time is None else inter.time[row_keep]
    values, offsets, lengths = _grouped(users, items, n_users, times)
    protocol["order"] = (
        "behaviours sorted by time, stable (equal times keep file order)"
        if times is not None
        else "no time column: behaviours kept in file order"
    )
    protocol["split"] = "evaluation user: history = first floor(n/2) behaviours, truth = the rest"
    train = _gather(values, offsets[train_u], lengths[train_u])
    val, test = (
        _half_split(values, offsets, lengths, val_u),
        _half_split(values, offsets, lengths, test_u),
    )
    ds = _dataset(item_ids, user_ids, train, train_u, val, test, protocol, counts)
    return ds, counts


def _dataset(item_ids, user_ids, train, train_u, val, test, protocol: dict, counts: dict) -> Dataset:
    """The Dataset both protocols return; adds the split sizes to ``counts``."""
    ds = Dataset(
        item_ids=item_ids,
        user_ids=user_ids,
        train=train,
        train_users=train_u.astype(np.int64),
        val=val,
        test=test,
        manifest={"protocol": protocol},
    )
    counts.update(_split_counts(ds))
    return ds


def _split_counts(ds: Dataset) -> dict:
    return {
        "train_users": len(ds.train),
        "train_interactions": int(len(ds.train.values)),
        "train_examples": int(len(ds.train.values) - int((ds.train.lengths > 0).sum())),
        "val_users": len(ds.val),
        "val_history_items": int(len(ds.val.hist.values)),
        "val_truth_items": int(len(ds.val.truth.values)),
        "test_users": len(ds.test),
        "test_history_items": int(len(ds.test.hist.values)),
        "test_truth_items": int(len(ds.test.truth.values)),
    }


def given_split(
    train_inter: Interactions,
    test_inter: Interactions,
    *,
    val_users: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Dataset, dict]:
    """Fixed train/test files (KGAT/LightGCN style); no filter is applied.

    Within each file a repeated (user, item) pair is kept once (the first, in file order):
    without time there is no repeat event. Dense user and item ids cover the union of both
    files (sorted by original id).
    Test split: every user with >= 1 test item; history = all the user's training items
    in file order, truth = the test items. Validation: ``val_users`` random users with
    >= 5 training items (``default_rng(seed)``; None: ``default_eval_users`` of them); for
    each, a random ``val_fraction`` of the training items (floor, at least 1) is the truth
    and the rest the history, and those held-out items are removed from the user's training
    row. Training rows: every user's
    remaining training items in file order (users left with none have no row).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DRError(f"val_fraction must be in (0, 1) (got {val_fraction})")
    if val_users is not None and val_users < 0:
        raise DRError(f"val_users must be >= 0 (got {val_users})")
    if (train_inter.user.dtype.kind == "U") != (test_inter.user.dtype.kind == "U") or (
        train_inter.item.dtype.kind == "U"
    ) != (test_inter.item.dtype.kind == "U"):
        raise DRError("train and test files disagree: ids are numbers in one and text in the other")
    counts: dict = {
        "train_rows_read": len(train_inter) + train_inter.dropped_missing,
        "test_rows_read": len(test_inter) + test_inter.dropped_missing,
        "train_rows_dropped_missing_field": train_inter.dropped_missing,
        "test_rows_dropped_missing_field": test_inter.dropped_missing,
    }
    tr_rows = _dedupe(train_inter, np.arange(len(train_inter)))
    te_rows = _dedupe(test_inter, np.arange(len(test_inter)))
    counts["train_duplicates_removed"] = len(train_inter) - len(tr_rows)
    counts["test_duplicates_removed"] = len(test_inter) - len(te_rows)
    train_inter = Interactions(train_inter.user[tr_rows], train_inter.item[tr_rows], None, None, "", "")
    test_inter = Interactions(test_inter.user[te_rows], test_inter.item[te_rows], None, None, "", "")
    n_tr = len(train_inter)
    user_ids, users = _factorize(np.concatenate([train_inter.user, test_inter.user]))
    item_ids, items = _factorize(np.concatenate([train_inter.item, test_inter.item]))
    n_users = len(user_ids)
    counts["users"], counts["items"] = n_users, len(item_ids)

    tr_vals, tr_off, tr_len = _grouped(users[:n_tr], items[:n_tr], n_users)
    te_vals, te_off, te_len = _grouped(users[n_tr:], items[n_tr:], n_users)

    # test: every user with a test item; history = all training items
    test_u = np.flatnonzero(te_len > 0)
    test = Split(
        users=test_u.astype(np.int64),
        hist=_gather(tr_vals, tr_off[test_u], tr_len[test_u]),
        truth=_gather(te_vals, te_off[test_u], te_len[test_u]),
    )

    # validation: hold out a random fraction of some users' training items
    eligible = np.flatnonzero(tr_len >= 5)
    counts["val_eligible_users"] = len(eligible)
    how = "given" if val_users is not None else f"default min(1000, 10% of the {len(eligible)} eligible)"
    val_users = default_eval_users(len(eligible)) if val_users is None else val_users
    if len(eligible) < val_users:
        raise DRError(
            f"only {len(eligible)} users have >= 5 training items, fewer than val_users "
            f"{val_users}; ask for fewer validation users"
        )
    rng = np.random.default_rng(seed)
    val_u = np.sort(rng.choice(eligible, size=val_users, replace=False)).astype(np.int64)
    n = tr_len[val_u]
    n_hold = np.maximum(1, np.floor(val_fraction * n).astype(np.int64))
    row_of = np.repeat(np.arange(len(val_u)), n)  # val row of each of their training positions
    pos = np.arange(n.sum(), dtype=np.int64) + np.repeat(tr_off[val_u] - np.cumsum(n) + n, n)
    # random rank of each position inside its user: held out when rank < n_hold
    order = np.lexsort((rng.random(len(pos)), row_of))
    rank = np.empty(len(pos), dtype=np.int64)
    rank[order] = np.arange(len(pos)) - np.repeat(np.cumsum(n) - n, n)
    held = rank < n_hold[row_of]
    val = Split(
        users=val_u,
        hist=Ragged.from_lengths(tr_vals[pos[~held]], n - n_hold),
        truth=Ragged.from_lengths(tr_vals[pos[held]], n_hold),
    )

    # training rows: each user's training items minus the held-out ones, file order
    keep = np.ones(len(tr_vals), dtype=bool)
    keep[pos[held]] = False
    row_len = tr_len.copy()
    row_len[val_u] -= n_hold
    train_u = np.flatnonzero(row_len > 0)
    train = Ragged.from_lengths(tr_vals[keep], row_len[train_u])

    protocol = {
        "name": "given-split",
        "filters": "none (the files' split is used as given)",
        "duplicates": "a repeated (user, item) pair within a file is kept once (the first)",
        "order": "no time: each user's items keep their file order",
        "test": "every user with >= 1 test item; history = all the user's training items, "
        "truth = the test items",
        "validation": (
            f"{val_users} users ({how}) drawn by numpy default_rng({seed}) among users with >= 5 "
            f"training items; max(1, floor({val_fraction:g} * n)) random training items are "
            "the truth, the rest the history; held-out items are removed from training rows "
            "(test histories keep them)"
        ),
    }
    ds = _dataset(item_ids, user_ids, train, train_u, val, test, protocol, counts)
    counts["val_held_out_items"] = int(n_hold.sum())
    counts["test_users_without_history"] = int((tr_len[test_u] == 0).sum())
    return ds, counts
