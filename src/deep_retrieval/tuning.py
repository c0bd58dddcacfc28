"""Grid search of a recommender's hyper-parameters on validation users only.

    result = tune(RP3beta, {"alpha": [0.5, 1.0], "beta": [0.0, 0.3]}, dataset, metric="recall", k=20)
    result.best, result.table   # {"alpha": ..., "beta": ...}, one row per grid point

Every combination of the grid is fitted on ``dataset.train`` and evaluated with
``evaluate(..., split="val")``: ``dataset.test`` is never read. ``GRIDS`` holds the small
default grids of the baselines (``dr experiment`` and ``benchmarks/tune_baselines.py``).

The serving beam of trained DR models, on the same users (``dr beam``):

    pick = pick_beam([model], dataset, beams=[5, 10, 20, 50], ks=[10, 50], target=0.99)
    pick.B, pick.rows   # the smallest B keeping 0.99 of brute force at every k; one row per B
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


@dataclass
class BeamPick:
    """``pick_beam``'s answer. ``rows``: one per B tried, ascending, each ``{"B", "recall": {k: DR's},
    "ratio": {k: DR / its brute force}, "items_scored", "latency_ms_batch1", "latency_ms_batched"}``
    plus ``"recall_blend"``, ``"ratio_blend"`` (DR + blend against the blend over all items) and
    ``"latency_ms_batch1_blend"``, ``"latency_ms_batched_blend"`` (DR + blend, as it serves) when
    the models carry a blend; every value the mean over the models. ``exact``: the
    brute-force recalls ``{"brute-force": {k: ...}, "blend": {k: ...}}``. ``B``: the smallest B
    whose every ratio is >= ``target``, None when no B tried reaches it."""

    rows: list[dict]
    exact: dict
    target: float
    B: int | None

    def table(self) -> str:
        """The rows as text (recall in percent, each ratio after its recall), the brute-force
        recalls and the pick."""
        blended = "ratio_blend" in self.rows[0]
        ks = list(self.rows[0]["ratio"])
        head = ["   B"] + [f"R@{k} /bf" for k in ks] + [f"+blend R@{k} /blend" for k in ks if blended]
        lat = ["latency_ms_batch1", "latency_ms_batched"]
        lat += [f"{x}_blend" for x in lat if blended]
        lines = ["  ".join(head + ["items scored", "ms b1", "ms batched"]
                           + (["ms b1 +blend", "ms batched +blend"] if blended else []))]
        for r in self.rows:
            cells = [f"{r['B']:4d}"] + [f"{100 * r['recall'][k]:.2f} {r['ratio'][k]:.3f}" for k in ks]
            if blended:
                cells += [f"{100 * r['recall_blend'][k]:.2f} {r['ratio_blend'][k]:.3f}" for k in ks]
            cells += [f"{r['items_scored']:,.0f}"]
            cells += [f"{r[key]:.3f}" for key in lat]
            lines.append("  ".join(cells))
        for name, rec in self.exact.items():
            recall = ", ".join(f"R@{k} {100 * v:.2f}" for k, v in rec.items())
            lines.append(f"{name} over all items: {recall}")
        if self.B is None:
            lines.append(f"no B tried keeps {self.target} of the brute-force recall at every k")
        else:
            lines.append(f"pick: B = {self.B}, the smallest B keeping >= {self.target} at every k")
        return "\n".join(lines)


class _AtBeam:
    """A DeepRetrieval answering at beam B, by its own reranker (``blend=False``) or as it serves."""

    def __init__(self, model, B: int, blend: bool):
        self.model, self.B, self.blend = model, B, blend
        self.last_items_scored = None

    def recommend(self, histories, k: int, exclude_history: bool = False):
        out = self.model.recommend(histories, k, exclude_history, B=self.B, blend=self.blend)
        self.last_items_scored = self.model.last_items_scored
        return out


def pick_beam(
    models: list, dataset: Dataset, beams: list[int], ks: list[int], target: float = 0.99,
    exclude_history: bool = False, latency_users: int = 50,
) -> BeamPick:
    """The smallest beam B at which trained DR models keep ``target`` of their brute-force recall.

    For every B in ``beams`` and k in ``ks``, each model's recall@k on the validation users at
    beam B (its own reranker ranking the candidates) is set against the same reranker over
    every item; a model that carries a blend is also scored as it serves (DR + blend against
    the blend over all items). Several models (e.g. training seeds on one data set) are
    pooled: a ratio is the mean DR recall over the mean brute-force recall. ``dataset.test``
    is never read. Latencies are medians over ``latency_users`` single-user calls (0: none).
    """
    if not models:
        raise DRError("pick_beam needs at least one model")
    if not beams or min(beams) < 1:
        raise DRError(f"beams must be integers >= 1, got {beams}")
    if not ks or min(ks) < 1:
        raise DRError(f"ks must be integers >= 1, got {ks}")
    if not 0 < target <= 1:
        raise DRError(f"target must be in (0, 1], got {target}")
    for m in models:
        same = m.item_ids is None or np.array_equal(np.asarray(dataset.item_ids), m.item_ids)
        if m.n_items != dataset.n_items or not same:
            raise DRError(f"a model's {m.n_items:,} items are not the data set's {dataset.n_items:,}: "
                          "pick the beam on the data the model was trained on")
    blended = [m.blend_scorer is not None for m in models]
    if any(blended) and not all(blended):
        raise DRError("pick_beam: pool models that all carry a blend, or none")
    ks = sorted(set(ks))

    def run(methods: dict) -> list[dict]:
        return evaluate(dataset, methods, ks, split="val", exclude_history=exclude_history,
                        latency_users=latency_users)["results"]

    def recalls(results: list[dict], method: str) -> dict[int, float]:
        return {r["k"]: r["recall"] for r in results if r["method"] == method}

    def mean(per_model: list[dict[int, float]]) -> dict[int, float]:
        return {k: float(sum(d[k] for d in per_model) / len(per_model)) for k in ks}

    exact_rows = []
    for m in models:
        recs = m.as_recommenders()
        exact = {"brute-force": recs["brute-force"]}
        if all(blended):
            exact["blend"] = recs["blend"]
        exact_rows.append(run(exact))
    exact = {"brute-force": mean([recalls(r, "brute-force") for r in exact_rows])}
    if all(blended):
        exact["blend"] = mean([recalls(r, "blend") for r in exact_rows])

    rows = []
    for B in sorted(set(beams)):
        per = []
        for m in models:
            methods = {"dr": _AtBeam(m, B, blend=False)}
            if all(blended):
                methods["dr+blend"] = _AtBeam(m, B, blend=True)
            per.append(run(methods))
        row = {"B": B, "recall": mean([recalls(r, "dr") for r in per])}
        row["ratio"] = {k: _ratio(row["recall"][k], exact["brute-force"][k]) for k in ks}
        if all(blended):
            row["recall_blend"] = mean([recalls(r, "dr+blend") for r in per])
            row["ratio_blend"] = {k: _ratio(row["recall_blend"][k], exact["blend"][k]) for k in ks}
        dr_rows = [x for r in per for x in r if x["method"] == "dr"]
        for key in ("items_scored_per_user", "latency_ms_batch1", "latency_ms_batched"):
            row[key.replace("_per_user", "")] = float(sum(x[key] for x in dr_rows) / len(dr_rows))
        if all(blended):  # what serving costs: the blend's term on top of DR's search
            bl_rows = [x for r in per for x in r if x["method"] == "dr+blend"]
            for key in ("latency_ms_batch1", "latency_ms_batched"):
                row[f"{key}_blend"] = float(sum(x[key] for x in bl_rows) / len(bl_rows))
        rows.append(row)
    return BeamPick(rows, exact, target, smallest_keeping(rows, target))


def smallest_keeping(rows: list[dict], target: float) -> int | None:
    """The smallest ``row["B"]`` whose every ratio (``"ratio"`` and, if present, ``"ratio_blend"``,
    each {k: value}) is >= target; None when no row has them all."""
    ok = [r["B"] for r in rows
          if min(r["ratio"].values()) >= target and min(r.get("ratio_blend", {0: 1.0}).values()) >= target]
    return min(ok) if ok else None


def _ratio(a: float, b: float) -> float:
    """a / b, and 1 when both are 0 (no user has a hit either way)."""
    return 1.0 if a == b == 0 else (a / b if b > 0 else float("inf"))
