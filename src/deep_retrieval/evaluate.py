"""Run recommenders on an evaluation split, time them, and report metrics as JSON.

The result of ``evaluate`` (fractions, not percentages)::

    {"dataset": ..., "split": "test", "n_users": ..., "exclude_history": false,
     "results": [{"method": "item-cf", "k": 10, "precision": ..., "recall": ..., "f1": ...,
                  "ndcg": ..., "hit": ..., "items_scored_per_user": ...,
                  "latency_ms_batch1": ..., "latency_ms_batched": ...}, ...]}
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import numpy as np

from .baselines import ALS, EASE, ItemCF, Popularity, RP3beta
from .data.dataset import Dataset
from .errors import DRError
from .metrics import compute
from .recommender import Recommender

BASELINES = {"popularity": Popularity, "item-cf": ItemCF, "rp3beta": RP3beta, "ease": EASE, "als": ALS}
FITTED = tuple(BASELINES)


def _dataset_name(dataset: Dataset) -> str:
    m = dataset.manifest
    return str(m.get("path") or m.get("name") or m.get("dataset") or "dataset")


def evaluate(
    dataset: Dataset,
    methods: dict[str, Recommender],
    ks: list[int],
    split: str = "test",
    exclude_history: bool = False,
    batch_size: int = 256,
    latency_users: int = 100,
    dataset_name: str | None = None,
) -> dict:
    """Evaluate every method on the split's users whose ground truth is not empty.

    Each method recommends once, batched, at ``max(ks)`` for all those users; smaller ks
    are prefixes of that list. ``items_scored_per_user`` is the mean of the method's
    ``last_items_scored`` over the batched calls. After one single-user warm-up call,
    ``latency_ms_batched`` is the wall time of all batched calls divided by ``n_users``
    and ``latency_ms_batch1`` the median single-user call over the first
    ``latency_users`` users.
    ``n_users`` counts the users evaluated (users with empty truth are left out).
    """
    if not methods:
        raise DRError("no method to evaluate")
    if not ks or min(ks) < 1:
        raise DRError(f"cut-offs must be a non-empty list of integers >= 1, got {ks}")
    ks = sorted({int(k) for k in ks})
    s = dataset.split(split)
    users = np.flatnonzero(s.truth.lengths > 0)
    if len(users) == 0:
        raise DRError(f"split {split!r} has no user with ground truth")
    hist, truth = s.hist.take(users), s.truth.take(users)
    n, k_max = len(users), ks[-1]

    results = []
    for name, rec in methods.items():
        rec.recommend(hist.take(np.arange(1)), k_max, exclude_history)  # warm-up
        ids, scored = [], []
        t0 = time.perf_counter()
        for lo in range(0, n, batch_size):
            i, _ = rec.recommend(
                hist.take(np.arange(lo, min(n, lo + batch_size))), k_max, exclude_history
            )
            ids.append(i)
            scored.append(np.asarray(rec.last_items_scored, dtype=np.float64))
        batched_ms = (time.perf_counter() - t0) * 1e3 / n
        recs = np.concatenate(ids)  # (n, k_max)
        items_scored = float(np.concatenate(scored).mean())

        single = []
        for u in range(min(latency_users, n)):
            row = hist.take(np.array([u]))
            t0 = time.perf_counter()
            rec.recommend(row, k_max, exclude_history)
            single.append(time.perf_counter() - t0)
        batch1_ms = float(np.median(single)) * 1e3 if single else float("nan")

        for k, m in compute(recs, truth, ks).items():
            results.append(
                {
                    "method": name,
                    "k": k,
                    "precision": m["precision"],
                    "recall": m["recall"],
                    "f1": m["f1"],
                    "ndcg": m["ndcg"],
                    "hit": m["hit"],
                    "items_scored_per_user": items_scored,
                    "latency_ms_batch1": batch1_ms,
                    "latency_ms_batched": batched_ms,
                }
            )
    return {
        "dataset": dataset_name or _dataset_name(dataset),
        "split": split,
        "n_users": int(n),
        "exclude_history": bool(exclude_history),
        "results": results,
    }


def format_table(result: dict) -> str:
    """A plain aligned text table of ``evaluate``'s result; metrics shown as percentages."""
    header = [
        "method",
        "k",
        "P%",
        "R%",
        "F%",
        "NDCG%",
        "hit%",
        "items scored",
        "ms/user b1",
        "ms/user batched",
    ]
    rows = [header]
    for r in result["results"]:
        rows.append(
            [
                str(r["method"]),
                str(r["k"]),
                *(f"{100 * r[m]:.2f}" for m in ("precision", "recall", "f1", "ndcg", "hit")),
                f"{r['items_scored_per_user']:.0f}",
                f"{r['latency_ms_batch1']:.3f}",
                f"{r['latency_ms_batched']:.3f}",
            ]
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = [
        f"{result['dataset']} / {result['split']}: {result['n_users']} users, "
        f"exclude_history={str(result['exclude_history']).lower()}; "
        "metrics in percent (P, R, F, NDCG, hit @ k), latency in ms per user"
    ]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _convert(value: str, default, where: str):
    """``value`` as the type of the parameter's default (bool, int, float or str)."""
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return type(default)(value) if isinstance(default, int | float | str) else float(value)
    except ValueError:
        raise DRError(f"{where}: cannot read {value!r} as {type(default).__name__}") from None


def baseline(spec: str) -> Recommender:
    """An unfitted baseline from ``NAME`` or ``NAME:PARAM=VALUE,PARAM=VALUE`` (the constructor's names)."""
    name, _, rest = spec.partition(":")
    if name not in BASELINES:
        raise DRError(f"unknown baseline {name!r}; valid: {', '.join(FITTED)}")
    cls = BASELINES[name]
    defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()}
    params = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in defaults:
            raise DRError(
                f"{spec}: {item!r} is not PARAM=VALUE with PARAM one of {', '.join(defaults) or 'none'}"
            )
        params[key.strip()] = _convert(value.strip(), defaults[key.strip()], spec)
    return cls(**params)


def _join_params(names: list[str]) -> list[str]:
    """Glue ``PARAM=VALUE`` pieces split off by commas back onto the method before them."""
    out: list[str] = []
    for n in names:
        if out and "=" in n and ":" not in n and ":" in out[-1] and not Path(n).is_dir():
            out[-1] += "," + n
        else:
            out.append(n)
    return out


def build_methods(names: list[str], dataset: Dataset) -> dict[str, Recommender]:
    """Recommenders by name, each fitted on ``dataset``: "popularity", "item-cf", "rp3beta",
    "ease", "als" (the ``als`` extra), optionally with parameters, e.g.
    ``rp3beta:alpha=0.8,beta=0.3,neighbours=200`` (a comma-split list is glued back).

    Any name that is an existing directory is a trained DR model; it contributes its
    "dr" and "brute-force" recommenders, and "hnsw" when faiss imports (keys are prefixed
    with the directory name when more than one model is given).
    """
    if not names:
        raise DRError("no method given: name at least one of popularity, item-cf, or a model dir")
    names = _join_params(names)
    models = [n for n in names if Path(n).is_dir()]
    methods: dict[str, Recommender] = {}
    for n in names:
        if n.partition(":")[0] in BASELINES and n not in models:
            methods[n] = baseline(n).fit(dataset)
        elif n in models:
            from .model import DeepRetrieval

            model = DeepRetrieval.load(n)
            if model.n_items != dataset.n_items:
                raise DRError(
                    f"model {n} was trained on {model.n_items} items but the data set has "
                    f"{dataset.n_items}: evaluate a model on the data set it was trained on"
                )
            recs = model.as_recommenders(with_hnsw=_faiss_available())
            for key, rec in recs.items():
                methods[key if len(models) == 1 else f"{Path(n).name}/{key}"] = rec
        else:
            hint = (
                f"{n} needs a trained model: give the model directory instead"
                if n in ("dr", "brute-force", "hnsw")
                else f"unknown method {n!r}"
            )
            raise DRError(f"{hint}; valid: {', '.join(FITTED)}, or a trained model directory")
    return methods
