"""Grid search of a recommender's hyper-parameters on validation users only.

    result = tune(RP3beta, {"alpha": [0.5, 1.0], "beta": [0.0, 0.3]}, dataset, metric="recall", k=20)
    result.best, result.table   # {"alpha": ..., "beta": ...}, one row per grid point

Every combination of the grid is fitted on ``dataset.train`` and evaluated with
``evaluate(..., split="val")``: ``dataset.test`` is never read. ``GRIDS`` holds the small
default grids of the baselines (``dr experiment`` and ``benchmarks/tune_baselines.py``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from .data.dataset import Dataset
from .errors import DRError
from .evaluate import evaluate
from .recommender import Recommender

METRICS = ("precision", "recall", "f1", "ndcg", "hit")

GRIDS: dict[str, dict[str, list]] = {
    "item-cf": {"neighbours": [50, 200, 500], "shrink": [0.0, 10.0, 100.0]},
    "rp3beta": {"alpha": [0.25, 0.5, 0.75, 1.0], "beta": [0.0, 0.2, 0.4, 0.6, 0.8], "neighbours": [100, 500]},
    "ease": {"l2": [50.0, 200.0, 500.0, 1000.0, 3000.0, 10000.0, 30000.0]},
    "als": {"factors": [32, 128], "regularization": [1.0, 10.0, 100.0], "alpha": [10.0]},
}


@dataclass
class TuneResult:
    best: dict  # the chosen params
    table: list[dict]  # one row per grid point: {**params, metric: value, "seconds": ...}
    metric: str  # e.g. "recall@20"
    recommender: Recommender | None = None  # the best one, fitted, when ``keep_best``


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the last parameter varying fastest."""
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise DRError("the grid must name at least one parameter, each with at least one value")
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def tune(
    make: Callable[..., Recommender],
    grid: dict[str, list],
    dataset: Dataset,
    metric: str = "recall",
    k: int = 20,
    exclude_history: bool = False,
    keep_best: bool = False,
    log: Callable[[str], object] = lambda _: None,
) -> TuneResult:
    """Fit ``make(**params)`` for every point of ``grid`` and score it on the validation users.

    The table has one row per point, ``{**params, metric: value, "seconds": fit +
    evaluation time}``, in grid order; the best is the highest ``metric@k`` (the first one
    on ties). With ``keep_best`` the best fitted recommender is returned too (so it need not
    be fitted again; at most two are held at once). Only ``dataset.val`` is evaluated.
    """
    if metric not in METRICS:
        raise DRError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    if k < 1:
        raise DRError(f"k must be >= 1, got {k}")
    table: list[dict] = []
    kept = None
    for params in grid_points(grid):
        t0 = time.perf_counter()
        rec = make(**params).fit(dataset)
        res = evaluate(dataset, {"tuned": rec}, [k], split="val", exclude_history=exclude_history,
                       latency_users=0)
        value = float(res["results"][0][metric])
        if keep_best and (not table or value > max(row[metric] for row in table)):
            kept = rec
        del rec
        table.append({**params, metric: value, "seconds": time.perf_counter() - t0})
        log(f"  {params}: {metric}@{k} {value:.4f} ({table[-1]['seconds']:.1f} s)")
    best = max(range(len(table)), key=lambda i: (table[i][metric], -i))
    return TuneResult({p: table[best][p] for p in grid}, table, f"{metric}@{k}", kept)
