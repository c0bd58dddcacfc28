"""Time replay: train on a base period, then feed the rest of the log in time-ordered chunks.

``time_replay(inter, chunks)`` turns time-stamped ``Interactions`` into a ``Replay``:

1. **Filters.** Ratings as in user-split: keep rating >= ``min_rating`` (4.0 by default
   when the data has a rating column). No user filter: it would look into the future.
2. **Repeats.** Every (user, item) pair is kept at its first interaction in time; later
   repeats are dropped, so a truth item is never already in that user's history.
3. **Order.** Interactions sorted by time, stable (equal times keep file order).
4. **Cut.** With ``s`` the n sorted times, the base period is every interaction with
   time < ``bounds[0] = s[floor(base_fraction * n)]``; the rest is cut at its time
   quantiles, ``bounds[j] = s[p0 + floor(j * (n - p0) / chunks)]`` (p0 = the position of
   ``bounds[0]``), and chunk j holds ``bounds[j] <= time < bounds[j + 1]`` (``bounds[-1]``
   = inf). Equal times always share a chunk, so sizes can differ a little from the
   quantiles; a chunk that ties leave empty is an error.
5. **Validation users.** ``val_users`` users drawn by ``default_rng(seed)`` among those with
   >= max(2, ``min_history``) base interactions are held out of the whole replay: their
   base sequence is split in half (history, truth) as the trainer's validation split, and
   none of their interactions is in a training row, a chunk or an evaluation set. So the
   incremental model and a full retrain see exactly the same training interactions.
6. **Base data set** (``Replay.base``, a ``Dataset`` the trainer takes as is): one
   training row per other user with base interactions (time order), the validation split
   above, an empty test split; dense ids over the base period's items and users, sorted
   by original id. ``Replay.dataset(j)`` builds the same for everything up to the end of
   chunk j, with the same validation split (the full retrain's data; ``dataset(-1)``
   equals ``base``).
7. **Evaluation** (``Replay.evals[j]``, one per chunk: after everything before chunk j,
   predict chunk j; ``evals[0]`` tests the base model, ``evals[i + 1]`` the model updated
   with chunks 0..i): users with >= 1 interaction in chunk j and >= ``min_history``
   interactions before it; history = all of them before chunk j, truth = the user's chunk-j
   items, both in time order. ``truth_new`` flags truth items absent from the base period
   (not in ``base.item_ids``). Users with fewer than ``min_history`` earlier interactions
   are counted (``eval_users_cold`` in the manifest) and not evaluated.

Ids: ``base`` (and ``dataset(j)``) use dense ids like every ``Dataset``; everything else
(the log, chunks, evaluation histories and truths) holds the ORIGINAL user and item ids,
because later items are not in the base id map. ``Ragged`` values keep the original id
dtype (int64 for every numeric id file).

On disk (``Replay.save``, atomic): ``manifest.json`` (parameters, counts per chunk and per
evaluation set), ``arrays.npz`` (no pickles) and ``base/`` (a Dataset directory, so
``dr train DIR/base`` works). ``Replay.load(dir)`` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import _is_replay, atomic_dir, read_json, read_npz
from ..errors import DRError, DRFileNotFoundError, InvalidInputError
from .dataset import Dataset, Ragged, Split
from .protocols import _factorize, _gather, _grouped
from .readers import Interactions

FORMAT_VERSION = 1




@dataclass
class ReplayEval:
    """After everything before chunk ``chunk``, predict the chunk. Original ids throughout."""

    chunk: int
    users: np.ndarray  # (n,) original user ids
    hist: Ragged  # original item ids, every interaction before the chunk, time order
    truth: Ragged  # original item ids, the user's interactions in the chunk, time order
    truth_new: np.ndarray  # (len(truth.values),) bool: the item is not in the base period

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Replay:
    """A base data set, the time-ordered log in chunks, and one evaluation set per chunk."""

    base: Dataset  # dense ids: what the trainer trains the first model on
    user: np.ndarray  # (n,) original user ids of the log (validation users excluded)
    item: np.ndarray  # (n,) original item ids
    time: np.ndarray  # (n,) float64, sorted
    offsets: np.ndarray  # (chunks + 1,) chunk j = log[offsets[j]:offsets[j + 1]]; base = [:offsets[0]]
    bounds: np.ndarray  # (chunks + 1,) float64, chunk j = bounds[j] <= time < bounds[j + 1]
    val_users: np.ndarray  # (m,) original ids of the held-out validation users
    val_hist: Ragged  # their base histories (original item ids)
    val_truth: Ragged  # their base truths (original item ids)
    evals: list[ReplayEval]
    manifest: dict = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return len(self.offsets) - 1

    def _part(self, lo: int, hi: int, what: str) -> Interactions:
        return Interactions(
            user=self.user[lo:hi],
            item=self.item[lo:hi],
            time=self.time[lo:hi],
            rating=None,
            source=f"time replay: {what}",
            order_note="sorted by time (stable), first interaction of each (user, item) pair",
        )

    def _check(self, j: int, lowest: int) -> int:
        if not lowest <= j < self.n_chunks:
            raise InvalidInputError(f"chunk {j} out of range: the replay has chunks 0..{self.n_chunks - 1}")
        return j

    def chunk(self, j: int) -> Interactions:
        """Chunk j's interactions (original ids, time order): the input of an update."""
        self._check(j, 0)
        return self._part(int(self.offsets[j]), int(self.offsets[j + 1]), f"chunk {j}")

    def upto(self, j: int) -> Interactions:
        """Every interaction up to the end of chunk j (j = -1: the base period)."""
        self._check(j, -1)
        return self._part(0, int(self.offsets[j + 1]), f"base + chunks 0..{j}")

    def dataset(self, j: int) -> Dataset:
        """The full retrain's data set: everything up to the end of chunk j, as ``base`` is built."""
        self._check(j, -1)
        n = int(self.offsets[j + 1])
        return _train_dataset(
            self.user[:n], self.item[:n], self.val_users, self.val_hist, self.val_truth, j, self.manifest
        )

    # ---------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write the replay directory atomically (see the module docstring)."""
        arrays = {
            "user": self.user,
            "item": self.item,
            "time": self.time,
            "offsets": self.offsets,
            "bounds": self.bounds,
            "val_users": self.val_users,
            **_rag("val_hist", self.val_hist),
            **_rag("val_truth", self.val_truth),
        }
        for e in self.evals:
            arrays[f"eval{e.chunk}_users"] = e.users
            arrays.update(_rag(f"eval{e.chunk}_hist", e.hist))
            arrays.update(_rag(f"eval{e.chunk}_truth", e.truth))
            arrays[f"eval{e.chunk}_truth_new"] = e.truth_new
        manifest = {**self.manifest, "format_version": FORMAT_VERSION}
        with atomic_dir(path, "replay") as tmp:
            self.base.save(tmp / "base")
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        self.manifest = manifest

    @classmethod
    def load(cls, path) -> Replay:
        path = Path(path)
        if not path.is_dir():
            raise DRFileNotFoundError(f"replay directory {path} not found")
        manifest = read_json(path / "manifest.json", "replay manifest")
        if manifest.get("format_version") != FORMAT_VERSION or not _is_replay(path):
            raise DRError(f"{path} is not a time-replay directory (format {FORMAT_VERSION})")
        a = read_npz(path / "arrays.npz", f"replay {path}")

        def rag(prefix: str) -> Ragged:
            return Ragged(a[f"{prefix}_values"], a[f"{prefix}_offsets"])

        try:
            evals = [
                ReplayEval(j, a[f"eval{j}_users"], rag(f"eval{j}_hist"), rag(f"eval{j}_truth"),
                           a[f"eval{j}_truth_new"])
                for j in range(manifest["parameters"]["chunks"])
            ]
            return cls(
                base=Dataset.load(path / "base"),
                user=a["user"],
                item=a["item"],
                time=a["time"],
                offsets=a["offsets"],
                bounds=a["bounds"],
                val_users=a["val_users"],
                val_hist=rag("val_hist"),
                val_truth=rag("val_truth"),
                evals=evals,
                manifest=manifest,
            )
        except KeyError as e:
            raise DRError(f"replay {path}: arrays.npz lacks array {e}") from None


def _rag(prefix: str, r: Ragged) -> dict:
    return {f"{prefix}_values": r.values, f"{prefix}_offsets": r.offsets}


# ------------------------------------------------------------------------------ building
def time_replay(
    inter: Interactions,
    chunks: int,
    base_fraction: float = 0.5,
    min_history: int = 5,
    val_users: int = 50,
    min_rating: float | None = None,
    seed: int = 0,
) -> Replay:
    """Cut time-stamped interactions into a base period and ``chunks`` chunks (module docstring)."""
    if inter.time is None:
        raise InvalidInputError(f"time replay needs a time column; {inter.source} has none")
    if chunks < 1:
        raise InvalidInputError(f"chunks must be >= 1 (got {chunks})")
    if not 0.0 < base_fraction < 1.0:
        raise InvalidInputError(f"base_fraction must be in (0, 1) (got {base_fraction})")
    if min_history < 1:
        raise InvalidInputError(f"min_history must be >= 1 (got {min_history})")
    if val_users < 0:
        raise InvalidInputError(f"val_users must be >= 0 (got {val_users})")
    if np.isnan(inter.time).any():
        raise InvalidInputError(f"{inter.source}: the time column has missing values")
    counts: dict = {"rows_read": len(inter)}

    # 1. rating filter, as user-split
    if inter.rating is None:
        if min_rating is not None:
            raise InvalidInputError(f"min_rating {min_rating} given but {inter.source} has no rating column")
        keep, rating_filter = np.ones(len(inter), dtype=bool), "none (the data has no rating column)"
    else:
        threshold = 4.0 if min_rating is None else float(min_rating)
        keep, rating_filter = inter.rating >= threshold, f"rating >= {threshold:g}"
    rows = np.flatnonzero(keep)
    counts["after_rating_filter"] = len(rows)

    # 2-3. time order, first interaction of each (user, item) pair
    rows = rows[np.argsort(inter.time[rows], kind="stable")]
    user_ids, u = _factorize(inter.user[rows])  # dense codes of this function only
    item_ids, it = _factorize(inter.item[rows])
    key = u * max(len(item_ids), 1) + it  # (n,)
    order = np.argsort(key, kind="stable")
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    kept = np.sort(order[first])  # first occurrences, back in time order
    rows, u, it = rows[kept], u[kept], it[kept]
    t = inter.time[rows].astype(np.float64)
    n = len(t)
    counts["after_dropping_repeats"] = n
    if n < chunks + 1:
        raise DRError(f"only {n} interactions after the filters: too few for a base and {chunks} chunks")

    # 4. cut at time quantiles
    p0 = min(max(int(base_fraction * n), 1), n - 1)
    pos = p0 + (np.arange(chunks, dtype=np.int64) * (n - p0)) // chunks  # (chunks,)
    bounds = np.append(t[pos], np.inf)  # (chunks + 1,)
    cut = np.searchsorted(t, bounds, side="left")  # (chunks + 1,) first position at each bound
    if cut[0] == 0:
        raise DRError("the base period is empty: the earliest interactions all share the cut-off time")

    # 5. validation users, held out of everything else
    n_users = len(user_ids)
    base_len = np.bincount(u[: cut[0]], minlength=n_users)
    eligible = np.flatnonzero(base_len >= max(2, min_history))
    if len(eligible) < val_users:
        raise DRError(
            f"only {len(eligible)} users have >= {max(2, min_history)} base interactions, fewer "
            f"than val_users {val_users}; ask for fewer validation users"
        )
    val_u = np.sort(np.random.default_rng(seed).choice(eligible, size=val_users, replace=False))
    is_val = np.zeros(n_users, dtype=bool)
    is_val[val_u] = True
    vals, voff, vlen = _grouped(u[: cut[0]], it[: cut[0]], n_users)  # base rows, time order
    h = vlen[val_u] // 2
    val_hist = _gather(vals, voff[val_u], h)
    val_truth = _gather(vals, voff[val_u] + h, vlen[val_u] - h)

    u_all = u
    stream = ~is_val[u]  # (n,)
    offsets = np.concatenate([[0], np.cumsum(stream)])[cut]  # (chunks + 1,) in the stream
    u, it, t = u[stream], it[stream], t[stream]
    empty = np.flatnonzero(np.diff(offsets) == 0)
    if len(empty):
        raise DRError(f"chunk {empty[0]} is empty (equal times at its bounds); ask for fewer chunks")

    # 7. evaluation sets, and counts per chunk
    in_base = np.zeros(len(item_ids), dtype=bool)
    in_base[it[: offsets[0]]] = True
    in_base[vals] = True  # the validation users' base items are in the base id map too
    seen = in_base.copy()
    evals, chunk_counts = [], []
    for j in range(chunks):
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        vals_j, off_j, len_j = _grouped(u[:hi], it[:hi], n_users)  # rows up to the chunk's end
        before = np.bincount(u[:lo], minlength=n_users)  # (U,)
        active = np.flatnonzero(len_j > before)
        users = active[before[active] >= min_history]
        hist = _gather(vals_j, off_j[users], before[users])
        truth = _gather(vals_j, off_j[users] + before[users], len_j[users] - before[users])
        evals.append(
            ReplayEval(
                chunk=j,
                users=user_ids[users],
                hist=Ragged(item_ids[hist.values], hist.offsets),
                truth=Ragged(item_ids[truth.values], truth.offsets),
                truth_new=~in_base[truth.values],
            )
        )
        items_j = np.unique(it[lo:hi])
        chunk_counts.append(
            {
                "chunk": j,
                "start_time": float(bounds[j]),
                "last_time": float(t[hi - 1]),
                "interactions": hi - lo,
                "users": len(np.unique(u[lo:hi])),
                "items": len(items_j),
                "new_items": int((~seen[items_j]).sum()),  # first seen in this chunk
                "interactions_on_new_items": int((~in_base[it[lo:hi]]).sum()),  # not in the base
                "eval_users": len(users),
                "eval_users_cold": int((before[active] < min_history).sum()),
                "eval_truth_items": int(len(truth.values)),
                "eval_truth_new_items": int((~in_base[truth.values]).sum()),
            }
        )
        seen[items_j] = True

    counts.update(
        base_interactions=int(offsets[0]),
        base_users=int((np.bincount(u[: offsets[0]], minlength=n_users) > 0).sum()),
        base_items=int(in_base.sum()),
        validation_users=val_users,
        validation_base_interactions=int(vlen[val_u].sum()),
        validation_later_interactions=int(is_val[u_all[cut[0] :]].sum()),  # dropped from chunks
        chunks=chunk_counts,
    )
    manifest = {
        "source": inter.source,
        "protocol": {
            "name": "time-replay",
            "rating_filter": rating_filter + ("" if min_rating is not None or inter.rating is None
                                              else " (default)"),
            "repeats": "first interaction of each (user, item) pair kept, later repeats dropped",
            "order": "sorted by time, stable (equal times keep file order)",
            "cut": f"base = time < the time at position floor({base_fraction:g} n); the rest in "
            f"{chunks} chunks at its time quantiles, [bounds[j], bounds[j + 1])",
            "validation": f"{val_users} users with >= {max(2, min_history)} base interactions, "
            f"default_rng({seed}); base sequence halved; held out of everything else",
            "evaluation": f"users active in a chunk with >= {min_history} earlier interactions; "
            "history = all earlier, truth = their chunk items; new = not in the base period",
        },
        "parameters": {
            "chunks": chunks,
            "base_fraction": base_fraction,
            "min_history": min_history,
            "val_users": val_users,
            "min_rating": min_rating,
            "seed": seed,
        },
        "counts": counts,
    }
    val_hist_o = Ragged(item_ids[val_hist.values], val_hist.offsets)
    val_truth_o = Ragged(item_ids[val_truth.values], val_truth.offsets)
    user_o, item_o = user_ids[u], item_ids[it]
    base = _train_dataset(
        user_o[: offsets[0]], item_o[: offsets[0]], user_ids[val_u], val_hist_o, val_truth_o, -1, manifest
    )
    return Replay(
        base=base,
        user=user_o,
        item=item_o,
        time=t,
        offsets=offsets.astype(np.int64),
        bounds=bounds,
        val_users=user_ids[val_u],
        val_hist=val_hist_o,
        val_truth=val_truth_o,
        evals=evals,
        manifest=manifest,
    )


def _train_dataset(
    user, item, val_users, val_hist: Ragged, val_truth: Ragged, upto: int, manifest: dict
) -> Dataset:
    """A trainable Dataset from a time-ordered log (original ids) and the validation users."""
    n = len(user)
    user_ids, uc = _factorize(np.concatenate([user, val_users]))
    item_ids, ic = _factorize(np.concatenate([item, val_hist.values, val_truth.values]))
    values, offsets, lengths = _grouped(uc[:n], ic[:n], len(user_ids))  # time order kept
    train_u = np.flatnonzero(lengths > 0)
    nh = len(val_hist.values)
    empty = Ragged(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    what = "the base period" if upto < 0 else f"the base period and chunks 0..{upto}"
    return Dataset(
        item_ids=item_ids,
        user_ids=user_ids,
        train=_gather(values, offsets[train_u], lengths[train_u]),
        train_users=train_u.astype(np.int64),
        val=Split(uc[n:], Ragged(ic[n : n + nh], val_hist.offsets), Ragged(ic[n + nh :], val_truth.offsets)),
        test=Split(np.zeros(0, dtype=np.int64), empty, empty),
        manifest={
            "source": manifest.get("source"),
            "protocol": {**manifest.get("protocol", {}), "data_set": f"training rows of {what}; "
                         "validation users held out; no test users (the replay evaluates by chunk)"},
            "parameters": {**manifest.get("parameters", {}), "upto_chunk": upto},
            "order": "sorted by time, stable",
            "counts": {"train_interactions_upto": n},
        },
    )
