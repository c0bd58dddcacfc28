"""`dr demo`: the whole pipeline on built-in synthetic data, in a few minutes on 2 cores.

latent-factor synthetic data (``deep_retrieval.data.latent``: 50,000 items, 3,000 users)
-> tune Item-CF and RP3beta on the validation users (``DEMO_GRIDS``, recall@10; EASE too where
its items x items inverse fits, as in ``--quick``)
-> train DR (the built-in ``demo`` config) with the tuned RP3beta as its blend (``[blend]``:
DR's candidates ranked by its reranker + w log RP3beta, w picked on the validation users)
-> evaluate DR as it serves, DR's own reranker, both by brute force, the tuned baselines and
popularity on the test users, history items excluded
-> ``<out>/results.json`` (the `dr evaluate` shape plus ``tuned``), ``report.md``,
``paths.png``, ``training.png``, and the trained model in ``<out>/model``.

The data follow the two-tower model's own assumption (a user vector, an item vector, a
softmax), where learned embeddings beat item-item counts. On ``dr synth``'s planted clusters
Item-CF wins instead (docs/choices.md). The catalogue is large enough for DR's point: exact
search over the reranker's 50,000 embeddings costs more than DR's beam and its candidates
(about a tenth of the catalogue); the report gives both batch-1 latencies, measured in the same run.
At 5,000 items (the demo until stop 24) exact search was the faster one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .artifacts import atomic_write_json, atomic_write_text, check_output
from .baselines import EASE, ItemCF, Popularity, RP3beta
from .config import Config
from .data.latent import LatentConfig, factor_cohesion, generate_latent
from .evaluate import evaluate, format_table
from .model import DeepRetrieval
from .recommender import Recommender
from .tuning import tune

KS = [10, 50]
TUNED = (("item-cf", ItemCF), ("rp3beta", RP3beta), ("ease", EASE))
# The grids the demo tunes on, around what the full ``GRIDS`` (49 points, 67 s) picked on the
# validation users of data seeds 0-2: Item-CF neighbours 500, shrink 10 (all three); RP3beta
# alpha 0.25 (seed 0) or 0.5 (seeds 1, 2), beta 0.2, neighbours 500. EASE is left out at 50,000
# items (its items x items inverse).
DEMO_GRIDS = {"item-cf": {"neighbours": [200, 500], "shrink": [10.0, 100.0]},
              "rp3beta": {"alpha": [0.25, 0.5], "beta": [0.0, 0.2, 0.4], "neighbours": [500]},
              "ease": {"l2": [50.0, 200.0, 500.0, 1000.0]}}
# --quick (the smoke test): two points per grid
QUICK_GRIDS = {"item-cf": {"neighbours": [200], "shrink": [0.0, 10.0]},
               "rp3beta": {"alpha": [0.5], "beta": [0.3, 0.6]},
               "ease": {"l2": [200.0, 500.0]}}


def tuned_baselines(ds, grids: dict, log=print) -> tuple[dict[str, Recommender], dict]:
    """Item-CF, RP3beta and EASE, each at the point of its grid with the best recall@KS[0] on the
    validation users (history excluded, as the demo scores); fitted, and the picks. EASE only
    where its default ``max_items`` lets it fit."""
    fitted, picks = {}, {}
    for name, cls in TUNED:
        if cls is EASE and ds.n_items > (limit := EASE().max_items):
            log(f"demo: ease left out: {ds.n_items:,} items is above its max_items "
                f"({limit:,}; an items x items inverse)")
            continue
        t0 = time.perf_counter()
        t = tune(cls, grids[name], ds, "recall", KS[0], exclude_history=True, keep_best=True)
        best = max(row["recall"] for row in t.table)
        fitted[name], picks[name] = t.recommender, {"params": t.best, "val_recall": best}
        log(f"demo: tuned {name} on the validation users: {t.best} (recall@{KS[0]} {100 * best:.2f}%, "
            f"{len(t.table)} points, {time.perf_counter() - t0:.0f}s)")
    return fitted, picks


def spec(name: str, params: dict) -> str:
    """``NAME:PARAM=VALUE,...``, as ``evaluate.baseline`` and ``blend.scorer`` read it."""
    return name + ":" + ",".join(f"{k}={v}" for k, v in params.items())


def run_demo(out, seed: int = 0, quick: bool = False, log=print) -> dict:
    out = check_output(out, "demo")  # absent, empty or a demo output: nothing else is written into
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lcfg = LatentConfig(seed=seed)
    if quick:
        lcfg = replace(lcfg, n_items=1000, n_users=600, n_interactions=24_000, val_users=100,
                       test_users=100)
    ds, truth = generate_latent(lcfg)
    log(f"demo: latent-factor data: {ds.n_items:,} items, {len(ds.train):,} training users, "
        f"{len(ds.train.values):,} training interactions, {len(ds.test)} test users")

    baselines, picks = tuned_baselines(ds, QUICK_GRIDS if quick else DEMO_GRIDS, log)

    cfg = Config.builtin("demo")
    cfg.train.seed = seed
    cfg.blend.scorer = spec("rp3beta", picks["rp3beta"]["params"])  # w and eps picked in fit
    cfg.blend.exclude_history = True  # picked as the test users are scored
    if quick:
        cfg.train.epochs_joint, cfg.train.epochs_dr = 2, 1
    t1 = time.perf_counter()
    model = DeepRetrieval(cfg).fit(ds, log=log)
    t_train = time.perf_counter() - t1
    model.save(out / "model")

    methods = {**model.as_recommenders(), **baselines, "popularity": Popularity().fit(ds)}
    result = evaluate(ds, methods, KS, split="test", exclude_history=True)
    result["dataset"] = f"synthetic latent-factor demo (seed {seed})"
    result["tuned"] = picks
    result["blend"] = model.blend
    table = format_table(result)
    log(table)

    cohesion = factor_cohesion(model.path_groups(), truth.item_factors)
    rng = np.random.default_rng(seed)
    shuffled = model.path_groups(rng.permutation(ds.n_items))
    chance = factor_cohesion(shuffled, truth.item_factors)
    result["planted"] = {"path_cohesion": cohesion, "path_cohesion_shuffled": chance}
    atomic_write_json(out / "results.json", result)
    _plot_paths(model, out / "paths.png")
    _plot_training(model, out / "training.png")
    atomic_write_text(out / "report.md", _report(result, table, model, t_train, time.perf_counter() - t0))
    log(f"demo: path cohesion {cohesion:.3f} (items shuffled across paths: {chance:.3f})")
    log(f"demo: wrote {out}/report.md, results.json, paths.png, training.png, model/ "
        f"in {time.perf_counter() - t0:.0f}s")
    return result


def _report(result: dict, table: str, model: DeepRetrieval, t_train: float, t_all: float) -> str:
    s = model.config.structure
    last = model.log[-1]
    p = last["paths"]
    row = {(r["method"], r["k"]): r for r in result["results"]}
    k = KS[0]
    dr, bf = row[("dr", k)], row[("brute-force", k)]
    served, blend = row[("dr+blend", k)], row[("blend", k)]
    cf = row[("item-cf", k)]
    best = max((r for r in result["results"] if r["k"] == k and r["method"] in dict(TUNED)),
               key=lambda r: r["recall"])
    b = result["blend"]
    tuned = "; ".join(f"{name} {v['params']}" for name, v in result["tuned"].items())
    return f"""# deep-retrieval demo

Synthetic latent-factor data ({model.n_items:,} items, {result['n_users']} test users; each user
draws items from a softmax over user-factor . item-factor + popularity), DR with K={s.K}, D={s.D},
J={s.J}, B={model.config.beam.B}, alpha={model.config.em.alpha}. Training took {t_train:.0f} s,
the whole demo {t_all:.0f} s. Metrics on the test users, history items excluded.

The baselines were tuned on the validation users ({tuned}). DR serves its candidates ranked by
its reranker + w log(RP3beta score / |history| + eps), the tuned RP3beta, w = {b['w']} and
eps = {b['eps']} picked on the validation users (w = 0 would be the reranker alone). Rows:
`dr+blend` is DR as it serves, `blend` the same scoring over all items; `dr` is DR ranked by
its own reranker, `brute-force` that reranker over all items.

```
{table}
```

- Recall@{k}: DR as it serves {100 * served['recall']:.2f}%, Item-CF {100 * cf['recall']:.2f}%,
  the best tuned baseline ({best['method']}) {100 * best['recall']:.2f}%; DR's own reranker
  {100 * dr['recall']:.2f}%.
- DR keeps {served['recall'] / max(blend['recall'], 1e-12):.3f} of the blend's brute-force
  recall@{k} and its own reranker {dr['recall'] / max(bf['recall'], 1e-12):.3f} of its brute-force
  recall@{k}, scoring {dr['items_scored_per_user']:.0f} of {model.n_items:,} items per user.
- Batch-1 latency, measured in this run: DR as it serves {served['latency_ms_batch1']:.2f} ms, the
  blend over all items {blend['latency_ms_batch1']:.2f} ms ({_ratio(blend, served)}); DR with its own
  reranker {dr['latency_ms_batch1']:.2f} ms, exact search over the same embeddings
  {bf['latency_ms_batch1']:.2f} ms ({_ratio(bf, dr)}).
- This data follows the two-tower model's own assumption; on planted item clusters
  (`dr synth --preset demo`) Item-CF beats DR (docs/choices.md).
- Paths: {p['non_empty']} non-empty of {p['n_paths']}, largest {p['largest']}, mean {p['mean']:.1f} items.
- Path cohesion (mean cosine of two items' true factors on the same path):
  {result['planted']['path_cohesion']:.3f} (the same path sizes with items shuffled:
  {result['planted']['path_cohesion_shuffled']:.3f}).

![path sizes](paths.png)
![training](training.png)
"""


def _ratio(exact: dict, dr: dict) -> str:
    """How many times faster DR's batch-1 call is than the exact one (or slower)."""
    r = exact["latency_ms_batch1"] / max(dr["latency_ms_batch1"], 1e-12)
    return f"DR {r:.1f}x faster" if r >= 1 else f"DR {1 / r:.1f}x slower"


def _plot_paths(model: DeepRetrieval, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, sizes = np.unique(model.assignment, return_counts=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(sizes, bins=np.arange(1, sizes.max() + 2) - 0.5 if sizes.max() < 60 else 50)
    ax.set_xlabel("items on the path")
    ax.set_ylabel("paths")
    ax.set_title("Path-size distribution (non-empty paths)")
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)


def _plot_training(model: DeepRetrieval, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [e["epoch"] for e in model.log]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].plot(ep, [e["Q_str"] for e in model.log], "o-", label="Q_str / example")
    sm = [(e["epoch"], e["Q_softmax"]) for e in model.log if e["Q_softmax"] is not None]
    if sm:
        axes[0].plot(*zip(*sm, strict=True), "s-", label="Q_softmax / example")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    axes[1].plot(ep, [e["paths"]["largest"] for e in model.log], "o-", label="largest path")
    axes[1].plot(ep, [e.get("candidates_per_user", np.nan) for e in model.log], "s-",
                 label="candidates / user")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    key = next((k for k in model.log[-1] if k.startswith("val_recall")), None)
    if key:
        axes[2].plot(ep, [e.get(key, np.nan) for e in model.log], "o-")
        axes[2].set_ylabel(key)
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)
