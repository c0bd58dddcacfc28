"""``prepare``: read interaction file(s), apply a split protocol, save a ``Dataset``.

The manifest records the source files (absolute path, size, sha256), the format and why
it was chosen, the protocol and every parameter (validation / test users as resolved),
the behaviour order, and the counts after each step (rows read, rows dropped for a
missing or NaN field, duplicates removed, ...). ``out`` is checked before anything is
read (``artifacts.check_output``: absent, empty or a prepared data set, not an input nor
a directory holding one) and written atomically: on any error nothing is left at ``out``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..artifacts import check_output
from ..errors import DRError, InvalidInputError
from .dataset import Dataset
from .protocols import given_split, user_split
from .readers import FORMATS, detect_format, read

PROTOCOLS = ("user-split", "given-split")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _source(path: Path) -> dict:
    p = path.resolve()
    return {"path": str(p), "size": p.stat().st_size, "sha256": _sha256(p)}


def prepare(
    inputs,
    out,
    *,
    fmt: str = "auto",
    protocol: str = "user-split",
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str | None = None,
    min_rating: float | None = None,
    min_user_interactions: int = 10,
    val_users: int | None = None,
    test_users: int | None = None,
    val_fraction: float = 0.2,
    max_seq_len: int = 69,
    keep_duplicates: bool = False,
    seed: int = 0,
    log: Callable[[str], object] = print,
) -> Dataset:
    """Prepare a data set at ``out`` from ``inputs`` and return it.

    ``inputs``: one file for ``user-split``; exactly two (train, test) for ``given-split``.
    ``fmt``: ``auto`` or one of ``readers.FORMATS``. ``max_seq_len`` is recorded for
    training (histories are stored whole). ``given-split`` applies no rating or user
    filter and tests every user with a test item, so ``min_rating`` must be None there and
    ``min_user_interactions``/``test_users`` are not used. ``val_users``/``test_users``
    None: min(1000, 10% of the eligible users). Repeated (user, item) pairs are collapsed
    to their first occurrence in time order unless ``keep_duplicates`` (user-split only:
    they are then repeat events). Rows with a missing or NaN field are dropped and counted.
    ``log`` receives short lines.
    """
    paths = [Path(inputs)] if isinstance(inputs, str | os.PathLike) else [Path(p) for p in inputs]
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    if fmt != "auto" and fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}: use auto or one of {', '.join(FORMATS)}")
    want = 1 if protocol == "user-split" else 2
    if len(paths) != want:
        need = "one input file" if want == 1 else "exactly two input files (train, test)"
        raise DRError(f"protocol {protocol} needs {need}, got {len(paths)}")
    if max_seq_len < 1:
        raise DRError(f"max_seq_len must be >= 1 (got {max_seq_len})")
    if protocol == "given-split" and min_rating is not None:
        raise DRError("given-split applies no rating filter: do not give min_rating")
    if protocol == "given-split" and keep_duplicates:
        raise DRError(
            "keep_duplicates applies to user-split only: given-split's files have no time, "
            "so a repeated (user, item) pair is not a repeat event"
        )
    out = check_output(out, "dataset", inputs=paths)

    if fmt == "auto":
        fmt, reason = detect_format(paths)
    else:
        reason = "given"
    log(f"format: {fmt} ({reason})")
    cols = dict(
        user_col=user_col, item_col=item_col, time_col=time_col, rating_col=rating_col, sep=sep
    )
    parts = [read(p, fmt, **cols) for p in paths]
    for p, inter in zip(paths, parts, strict=True):
        log(f"read {len(inter):,} rows from {p.name}: {inter.source}")
        if inter.dropped_missing:
            log(f"dropped {inter.dropped_missing:,} rows of {p.name} with a missing or NaN field")

    if protocol == "user-split":
        ds, counts = user_split(
            parts[0],
            min_rating=min_rating,
            min_user_interactions=min_user_interactions,
            val_users=val_users,
            test_users=test_users,
            keep_duplicates=keep_duplicates,
            seed=seed,
        )
        prot = ds.manifest["protocol"]
        log(
            f"rating filter {prot['rating_filter']}: {counts['after_rating_filter']:,} rows; "
            f"duplicates removed: {counts['duplicates_removed']:,}; "
            f"users with >= {min_user_interactions}: {counts['users']:,} users, "
            f"{counts['after_user_filter']:,} rows"
        )
        params = dict(
            min_rating=min_rating,
            min_user_interactions=min_user_interactions,
            val_users=counts["val_users"],
            test_users=counts["test_users"],
            keep_duplicates=keep_duplicates,
        )
    else:
        ds, counts = given_split(
            parts[0], parts[1], val_users=val_users, val_fraction=val_fraction, seed=seed
        )
        params = dict(val_users=counts["val_users"], val_fraction=val_fraction)
        dups = counts["train_duplicates_removed"] + counts["test_duplicates_removed"]
        if dups:
            log(f"duplicates removed: {counts['train_duplicates_removed']:,} train rows, "
                f"{counts['test_duplicates_removed']:,} test rows")
        if counts["test_users_without_history"]:
            log(f"note: {counts['test_users_without_history']:,} test users have no training item")
    params.update(max_seq_len=max_seq_len, seed=seed, **{k: v for k, v in cols.items()})
    log(
        f"{counts['users']:,} users, {counts['items']:,} items; train {counts['train_users']:,} "
        f"users / {counts['train_interactions']:,} interactions / {counts['train_examples']:,} "
        f"examples; val {counts['val_users']:,} users; test {counts['test_users']:,} users "
        f"({counts['test_truth_items']:,} truth items)"
    )

    ds.manifest = {
        "sources": [_source(p) for p in paths],
        "format": fmt,
        "format_reason": reason,
        "reader": [inter.source for inter in parts],
        "protocol": ds.manifest["protocol"],
        "parameters": {
            "protocol": protocol, "format": fmt, **params,
            "val_users_given": val_users, "test_users_given": test_users,
        },
        "order": parts[0].order_note + "; " + ds.manifest["protocol"]["order"],
        "counts": counts,
    }
    ds.save(out)
    log(f"saved to {out}")
    return ds
