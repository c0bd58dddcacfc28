"""Readers for interaction logs: one function per file format, each returning ``Interactions``.

Formats (``FORMATS``):

    ml-100k   MovieLens 100K ``u.data``: user \\t item \\t rating \\t unix-time, no header
    ml-dat    MovieLens 1M/10M ``ratings.dat``: user::item::rating::time, no header
    ml-csv    MovieLens 20M / latest ``ratings.csv``: userId,movieId,rating,timestamp + header
    csv       any CSV/TSV (optionally .gz) with a header; columns given or guessed by name
    parquet   any Parquet file; columns given or guessed by name
    kgat      KGAT/LightGCN ``train.txt``/``test.txt``: lines ``user item item ...``
    lastfm    HetRec 2011 Last.fm ``user_artists.dat``: user \\t artist \\t play-count

Every mistake in a user's file raises ``DRError`` with one line naming the file and the
problem. A row with a missing field (an empty cell, or NaN / "nan" in any column used) is
dropped, not an error; ``Interactions.dropped_missing`` counts them (``prepare`` logs it and
records it in the manifest). Files are parsed with polars, so a 10M-row file reads in seconds.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import DRError, DRFileNotFoundError, InvalidInputError

FORMATS = ("ml-100k", "ml-dat", "ml-csv", "csv", "parquet", "kgat", "lastfm")

# Header names recognised when csv/parquet columns are not given (compared lower-cased).
GUESS = {
    "user": ("user", "userid", "user_id", "uid"),
    "item": ("item", "itemid", "item_id", "movie_id", "movieid", "artistid", "iid"),
    "time": ("timestamp", "time", "ts"),
    "rating": ("rating", "label", "score"),
}
SNIFF_SEPS = (",", "\t", ";", "|")


@dataclass
class Interactions:
    """One row per (user, item) interaction, in file order.

    ``user``/``item`` hold the original ids (int64, or numpy str when not all numeric);
    ``time``/``rating`` are float64 or None when the file has no such column.
    ``dropped_missing``: rows of the file left out because a field was missing or NaN.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray | None
    rating: np.ndarray | None
    source: str
    order_note: str
    dropped_missing: int = 0

    def __len__(self) -> int:
        return len(self.user)


# ----------------------------------------------------------------------------- helpers
def _check_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DRFileNotFoundError(f"input file {path} not found")
    if not path.is_file():
        raise DRError(f"input {path} is not a file")
    if path.stat().st_size == 0:
        raise DRError(f"input file {path} is empty")
    return path


def _head_lines(path: Path, n: int = 5) -> list[str]:
    """The first ``n`` non-empty lines (gzip-aware, undecodable bytes replaced)."""
    opener = gzip.open if _is_gzip(path) else open
    lines: list[str] = []
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            for line in f:
                line = line.rstrip("\r\n")
                if line.strip():
                    lines.append(line)
                if len(lines) >= n:
                    break
    except (OSError, EOFError) as e:
        raise DRError(f"input file {path} cannot be read: {e}") from None
    return lines


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_table(path: Path, what: str, **kw) -> pl.DataFrame:
    """polars.read_csv; parse failures become one-line DRErrors.

    Column types are inferred (fast path); if that fails (e.g. a non-number after the
    first rows of a numeric column) the file is read again with every column as str, so
    the column checks can name the bad value.
    """
    try:
        try:
            df = pl.read_csv(path, **kw)
        except pl.exceptions.ComputeError:
            df = pl.read_csv(path, infer_schema=False, **kw)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DRError(f"{path}: cannot be read as {what}: {msg}") from None
    if df.width > 1:  # blank lines come back as all-null rows
        df = df.filter(~pl.all_horizontal(pl.all().is_null()))
    if df.height == 0:
        raise DRError(f"input file {path} has no data rows")
    return df


def _first_bad(s: pl.Series, ok: pl.Series) -> str:
    """'row N (value 'x')' for the first False of ``ok`` (data rows from 1, blank lines skipped)."""
    i = int(np.flatnonzero(~ok.fill_null(False).to_numpy())[0])
    return f"row {i + 1} (value {s[i]!r})"


def _missing(s: pl.Series) -> pl.Series:
    """(n,) bool: the cell is empty (null or blank) or NaN (a float NaN or the text 'nan')."""
    if s.dtype.is_float():
        m = s.is_null() | s.is_nan()
    elif s.dtype == pl.String:
        t = s.str.strip_chars().str.to_lowercase()
        m = s.is_null() | (t == "") | (t == "nan")
    else:
        m = s.is_null()
    return m.fill_null(True)


def _ids(path: Path, s: pl.Series, what: str, numeric: bool) -> np.ndarray:
    """Original ids: int64 when every value is an integer, else numpy str (unless ``numeric``).

    Missing cells get a placeholder here; ``_drop_missing`` removes their rows.
    """
    miss = _missing(s)
    if s.dtype.is_integer():
        return s.fill_null(0).cast(pl.Int64).to_numpy()
    s = s.cast(pl.String).str.strip_chars()
    as_int = s.cast(pl.Int64, strict=False)
    ok = as_int.is_not_null() | miss
    if ok.all():
        return as_int.fill_null(0).to_numpy()
    if numeric:
        raise DRError(f"{path}: non-numeric {what} at {_first_bad(s, ok)}; this format needs integer ids")
    return s.fill_null("").to_numpy().astype(str)


def _floats(path: Path, s: pl.Series, what: str) -> np.ndarray:
    """float64 values (NaN where missing); a non-numeric value raises DRError."""
    miss = _missing(s)
    if not s.dtype.is_numeric():
        s = s.cast(pl.String).str.strip_chars()
    f = s.cast(pl.Float64, strict=False)
    ok = f.is_not_null() | miss
    if not ok.all():
        raise DRError(f"{path}: non-numeric {what} at {_first_bad(s, ok)}")
    return f.fill_null(np.nan).to_numpy().astype(np.float64, copy=False)


def _drop_missing(path: Path, cols: list[pl.Series], inter: Interactions) -> Interactions:
    """``inter`` without the rows where any of ``cols`` is missing; counts them."""
    miss = np.zeros(len(inter), dtype=bool)
    for s in cols:
        miss |= _missing(s).to_numpy()
    n = int(miss.sum())
    if n == 0:
        return inter
    if n == len(inter):
        raise DRError(f"input file {path}: every one of its {n} rows has a missing or NaN field")
    keep = ~miss
    inter.user, inter.item = inter.user[keep], inter.item[keep]
    inter.time = None if inter.time is None else inter.time[keep]
    inter.rating = None if inter.rating is None else inter.rating[keep]
    inter.dropped_missing += n
    return inter


def _need_columns(path: Path, df: pl.DataFrame, n: int, layout: str, sep: str) -> None:
    if df.width < n:
        raise DRError(
            f"{path}: found {df.width} column(s) separated by {sep!r}, expected {n} ({layout}); "
            "wrong delimiter or wrong format?"
        )
    if df.width > n:
        raise DRError(f"{path}: found {df.width} columns, expected {n} ({layout}); wrong format?")


# ----------------------------------------------------------------------------- formats
def read_ml100k(path) -> Interactions:
    """MovieLens 100K ``u.data``: ``user \\t item \\t rating \\t unix-time``, no header."""
    path = _check_file(path)
    df = _read_table(path, "ml-100k", separator="\t", has_header=False, quote_char=None)
    _need_columns(path, df, 4, "user, item, rating, time", "\t")
    c = df.columns
    return _drop_missing(path, [df[x] for x in c], Interactions(
        user=_ids(path, df[c[0]], "user id", numeric=True),
        item=_ids(path, df[c[1]], "item id", numeric=True),
        rating=_floats(path, df[c[2]], "rating"),
        time=_floats(path, df[c[3]], "time"),
        source=f"ml-100k {path.name} (user, item, rating, unix time)",
        order_note="time = unix seconds; equal times keep file order",
    ))


def read_ml_dat(path) -> Interactions:
    """MovieLens 1M/10M ``ratings.dat``: ``user::item::rating::time``, no header."""
    path = _check_file(path)
    # polars separators are one byte: split on ':' and keep every other column
    df = _read_table(path, "ml-dat", separator=":", has_header=False, quote_char=None)
    c = df.columns
    if df.width != 7 or any(df[c[j]].null_count() < df.height for j in (1, 3, 5)):
        raise DRError(
            f"{path}: lines are not 'user::item::rating::time' (found {df.width} ':'-fields, "
            "expected 7); wrong format?"
        )
    return _drop_missing(path, [df[c[j]] for j in (0, 2, 4, 6)], Interactions(
        user=_ids(path, df[c[0]], "user id", numeric=True),
        item=_ids(path, df[c[2]], "item id", numeric=True),
        rating=_floats(path, df[c[4]], "rating"),
        time=_floats(path, df[c[6]], "time"),
        source=f"ml-dat {path.name} (user::item::rating::time)",
        order_note="time = unix seconds; equal times keep file order",
    ))


def read_ml_csv(path, **cols) -> Interactions:
    """MovieLens 20M / latest ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).

    Column options, if given, override those names (the file is then read as ``csv``).
    """
    defaults = dict(
        user_col="userId", item_col="movieId", rating_col="rating", time_col="timestamp", sep=","
    )
    defaults.update({k: v for k, v in cols.items() if v is not None})
    return _read_delimited(path, "ml-csv", **defaults)


def _pick_columns(path: Path, names: list[str], given: dict) -> tuple[dict, list[str]]:
    """Map role -> column name: the given ones (checked) plus ones guessed from the header."""
    chosen: dict[str, str | None] = {}
    notes: list[str] = []
    lower = {n.strip().lower(): n for n in names}
    for role in ("user", "item", "time", "rating"):
        name = given.get(f"{role}_col")
        if name is not None:
            if name not in names:
                raise DRError(
                    f"{path}: no column {name!r} (for {role}); columns are {', '.join(names)}"
                )
            chosen[role] = name
            continue
        guess = next((lower[g] for g in GUESS[role] if g in lower), None)
        if guess is None and role in ("user", "item"):
            raise DRError(
                f"{path}: cannot tell which column holds the {role} id; columns are "
                f"{', '.join(names)}; give {role}_col"
            )
        chosen[role] = guess
        notes.append(f"{role}={guess}" if guess is not None else f"no {role} column")
    if chosen["user"] == chosen["item"]:
        raise DRError(f"{path}: user and item columns are both {chosen['user']!r}")
    return chosen, notes


def _sniff_sep(path: Path, lines: list[str]) -> str:
    """The candidate found in the header line, preferring one found equally often in the
    first lines, then the most frequent."""
    found = [
        (len({line.count(sep) for line in lines}) == 1, lines[0].count(sep), sep)
        for sep in SNIFF_SEPS
        if lines[0].count(sep)
    ]
    if not found:
        raise DRError(
            f"{path}: found none of the separators {' '.join(map(repr, SNIFF_SEPS))} in the "
            f"header line {lines[0][:60]!r}; give sep"
        )
    return max(found)[2]


def _from_frame(path: Path, df: pl.DataFrame, cols: dict, what: str, sep_note: str) -> Interactions:
    chosen, notes = _pick_columns(path, df.columns, cols)
    used = [df[name] for name in chosen.values() if name is not None]
    return _drop_missing(path, used, Interactions(
        user=_ids(path, df[chosen["user"]], f"user id (column {chosen['user']!r})", False),
        item=_ids(path, df[chosen["item"]], f"item id (column {chosen['item']!r})", False),
        time=None if chosen["time"] is None else _floats(path, df[chosen["time"]], "time"),
        rating=None if chosen["rating"] is None else _floats(path, df[chosen["rating"]], "rating"),
        source=(
            f"{what} {path.name}{sep_note} columns user={chosen['user']} item={chosen['item']} "
            f"time={chosen['time']} rating={chosen['rating']}"
            + (f" (guessed: {', '.join(notes)})" if notes else "")
        ),
        order_note=(
            f"time = column {chosen['time']!r}; equal times keep file order"
            if chosen["time"] is not None
            else "no time column: file order is the behaviour order"
        ),
    ))


def read_csv(
    path, *, user_col=None, item_col=None, time_col=None, rating_col=None, sep=None
) -> Interactions:
    """Any CSV/TSV with a header line (optionally gzip-compressed).

    ``sep`` None sniffs one of ``, \\t ; |``; ``"\\\\t"`` and ``"tab"`` also mean a tab.
    Columns not given are guessed from the header names (see ``GUESS``); the choice is
    written into ``Interactions.source``.
    Ids stay int64 when every value is an integer, else they are kept as str.
    """
    return _read_delimited(
        path, "csv", user_col=user_col, item_col=item_col, time_col=time_col,
        rating_col=rating_col, sep=sep,
    )  # fmt: skip


def _read_delimited(path, what, *, user_col, item_col, time_col, rating_col, sep) -> Interactions:
    path = _check_file(path)
    lines = _head_lines(path)
    if not lines:
        raise DRError(f"input file {path} is empty")
    if sep is None:
        sep = _sniff_sep(path, lines)
        sep_note = f" (separator {sep!r} sniffed)"
    else:
        sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)  # '\t' as typed in a shell
        if len(sep) != 1:
            raise DRError(f"separator {sep!r} must be one character")
        sep_note = f" (separator {sep!r})"
    df = _read_table(path, what, separator=sep, has_header=True)
    if df.width < 2:
        raise DRError(
            f"{path}: reading with separator {sep!r} gives 1 column ({df.columns[0][:60]!r}); "
            "wrong delimiter?"
        )
    return _from_frame(path, df, _cols(user_col, item_col, time_col, rating_col), what, sep_note)


def read_parquet(
    path, *, user_col=None, item_col=None, time_col=None, rating_col=None
) -> Interactions:
    """Any Parquet file; columns given or guessed from their names as for ``read_csv``."""
    path = _check_file(path)
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DRError(f"{path}: cannot be read as parquet: {msg}") from None
    if df.height == 0:
        raise DRError(f"input file {path} has no data rows")
    return _from_frame(path, df, _cols(user_col, item_col, time_col, rating_col), "parquet", "")


def _cols(user_col, item_col, time_col, rating_col) -> dict:
    return dict(user_col=user_col, item_col=item_col, time_col=time_col, rating_col=rating_col)


def read_kgat(path) -> Interactions:
    """KGAT/LightGCN lines ``user item item ...`` (whitespace separated, integer ids).

    A user line with no items is allowed (it adds no interaction). Items keep their order
    on the line; there is no time.
    """
    path = _check_file(path)
    df = _read_table(
        path,
        "kgat",
        separator="\x1f",
        has_header=False,
        quote_char=None,
        new_columns=["line"],
        schema_overrides={"line": pl.String},
    )
    toks = (
        df.with_row_index("row")
        .filter(pl.col("line").str.strip_chars().str.len_chars() > 0)
        .select("row", pl.col("line").str.extract_all(r"\S+").alias("tok"))
    )
    if toks.height == 0:
        raise DRError(f"input file {path} has no data rows")
    user = toks["tok"].list.first()
    user_int = user.cast(pl.Int64, strict=False)
    if user_int.null_count():
        i = int(np.flatnonzero(user_int.is_null().to_numpy())[0])
        raise DRError(
            f"{path}: non-numeric user id {user[i]!r} on line {toks['row'][i] + 1}; "
            "kgat lines are 'user item item ...' with integer ids"
        )
    n_items = toks["tok"].list.len() - 1
    items = toks.select("row", pl.col("tok").list.slice(1)).explode("tok")
    items = items.filter(pl.col("tok").is_not_null())
    item_int = items["tok"].cast(pl.Int64, strict=False)
    if item_int.null_count():
        i = int(np.flatnonzero(item_int.is_null().to_numpy())[0])
        raise DRError(
            f"{path}: non-numeric item id {items['tok'][i]!r} on line {items['row'][i] + 1}; "
            "kgat lines are 'user item item ...' with integer ids"
        )
    return Interactions(
        user=np.repeat(user_int.to_numpy(), n_items.to_numpy()),
        item=item_int.to_numpy(),
        time=None,
        rating=None,
        source=f"kgat {path.name} (lines 'user item item ...')",
        order_note="no time: items keep their order on each user's line (file order)",
    )


def read_lastfm(path) -> Interactions:
    """HetRec 2011 Last.fm ``user_artists.dat``: ``user \\t artist \\t play-count``.

    CRLF line ends and an optional ``userID artistID weight`` header are accepted. The
    play count is not a rating: ``rating`` is None (no rating filter applies), and there
    is no time, so file order is the behaviour order.
    """
    path = _check_file(path)
    df = _read_table(path, "lastfm", separator="\t", has_header=False, quote_char=None)
    _need_columns(path, df, 3, "user, artist, play count", "\t")
    c = df.columns
    first = str(df[c[0]][0]).strip().lower()
    if first == "userid":
        df = df.slice(1)
        if df.height == 0:
            raise DRError(f"input file {path} has no data rows")
    _ = _floats(path, df[c[2]], "play count")  # validated, not used as a rating
    return _drop_missing(path, [df[x] for x in c], Interactions(
        user=_ids(path, df[c[0]], "user id", numeric=True),
        item=_ids(path, df[c[1]], "artist id", numeric=True),
        time=None,
        rating=None,
        source=f"lastfm {path.name} (user, artist, play count; play count ignored, not a rating)",
        order_note="no time column: file order is the behaviour order",
    ))


# ----------------------------------------------------------------------------- dispatch
def _is_int(tok: str) -> bool:
    return tok.strip().lstrip("-").isdigit()


def _detect_one(path: Path) -> tuple[str, str]:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet", f"{path.name}: .parquet file name"
    lines = _head_lines(path)
    if not lines:
        raise DRError(f"input file {path} is empty")
    first = lines[0]
    if name == "u.data":
        return "ml-100k", f"{path.name}: MovieLens 100K file name"
    if "::" in first:
        return "ml-dat", f"{path.name}: first line {first[:40]!r} has '::' separators"
    if name.startswith("user_artists") or first.lower().startswith("userid\tartistid"):
        return "lastfm", f"{path.name}: HetRec Last.fm user_artists file"
    if first.strip() == "userId,movieId,rating,timestamp":
        return "ml-csv", f"{path.name}: MovieLens ratings.csv header"
    fields = [line.split("\t") for line in lines]
    if all(len(f) == 4 and all(_is_int(t) for t in f) for f in fields):
        return "ml-100k", f"{path.name}: 4 tab-separated integer columns, no header (u.data layout)"
    if not any(sep in line for line in lines for sep in SNIFF_SEPS) and all(
        _is_int(line.split()[0]) for line in lines
    ):
        return (
            "kgat",
            f"{path.name}: space-separated lines starting with an integer (user item ...)",
        )
    return "csv", f"{path.name}: delimited text with a header line"


def detect_format(paths) -> tuple[str, str]:
    """Guess the format of the input file(s) from the file name and first lines.

    Returns ``(format, reason)``; all files must agree, else DRError.
    """
    paths = _as_paths(paths)
    found = [_detect_one(_check_file(p)) for p in paths]
    fmts = {f for f, _ in found}
    if len(fmts) > 1:
        raise DRError(
            "input files look like different formats: "
            + "; ".join(f"{p} -> {f}" for p, (f, _) in zip(paths, found, strict=True))
            + "; give the format"
        )
    return found[0][0], "; ".join(r for _, r in found)


def _as_paths(paths) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise DRError("no input file given")
    return out


def read(paths, fmt: str = "auto", **cols) -> Interactions:
    """Read one file (or several of one format, concatenated in order) into ``Interactions``.

    ``cols`` are ``user_col``, ``item_col``, ``time_col``, ``rating_col`` and ``sep``; they
    apply to ``csv``, ``ml-csv`` and (except ``sep``) ``parquet``. ``fmt="auto"`` uses
    ``detect_format``.
    """
    paths = _as_paths(paths)
    unknown = set(cols) - {"user_col", "item_col", "time_col", "rating_col", "sep"}
    if unknown:
        raise TypeError(f"unknown reader options {sorted(unknown)}")
    given = {k: v for k, v in cols.items() if v is not None}
    if fmt == "auto":
        fmt, _ = detect_format(paths)
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown format {fmt!r}: use auto or one of {', '.join(FORMATS)}")
    fixed = fmt in ("ml-100k", "ml-dat", "kgat", "lastfm")
    if (fixed and given) or (fmt == "parquet" and "sep" in given):
        raise DRError(
            f"format {fmt} has a fixed layout: options {', '.join(sorted(given))} do not apply "
            "(use format csv to choose columns)"
        )
    parts = [_read_one(p, fmt, given) for p in paths]
    return parts[0] if len(parts) == 1 else _concat(parts)


def _read_one(path: Path, fmt: str, given: dict) -> Interactions:
    if fmt == "ml-100k":
        return read_ml100k(path)
    if fmt == "ml-dat":
        return read_ml_dat(path)
    if fmt == "ml-csv":
        return read_ml_csv(path, **given)
    if fmt == "csv":
        return read_csv(path, **given)
    if fmt == "parquet":
        return read_parquet(path, **given)
    if fmt == "kgat":
        return read_kgat(path)
    return read_lastfm(path)


def _concat(parts: Sequence[Interactions]) -> Interactions:
    for what in ("time", "rating"):
        has = [getattr(p, what) is not None for p in parts]
        if any(has) and not all(has):
            raise DRError(f"input files disagree: some have a {what} column and some do not")
    kinds = {(p.user.dtype.kind, p.item.dtype.kind) for p in parts}
    if len(kinds) > 1:
        raise DRError("input files disagree: ids are numbers in some and text in others")
    return Interactions(
        user=np.concatenate([p.user for p in parts]),
        item=np.concatenate([p.item for p in parts]),
        time=None if parts[0].time is None else np.concatenate([p.time for p in parts]),
        rating=None if parts[0].rating is None else np.concatenate([p.rating for p in parts]),
        source=" + ".join(p.source for p in parts),
        order_note=parts[0].order_note + " (files concatenated in the order given)",
        dropped_missing=sum(p.dropped_missing for p in parts),
    )
