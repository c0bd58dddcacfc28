"""Tune Item-CF, RP3beta and EASE on validation users, then report test users with the chosen params.

    .venv/bin/python benchmarks/tune_baselines.py [--sets ml100k,lastfm] [--methods item-cf,rp3beta,ease]
                        [--data-root ../shared/data] [--work /tmp/dr-baselines] [--threads 1] [--als]

Each data set is prepared as its ``experiments/<name>.toml`` says (``dr prepare``'s
defaults otherwise), cached under ``--work``. For every method the grid below is searched
on the validation users (``tuning.tune``: metric recall at the experiment's first k, with
its ``exclude_history``), then the best point (kept fitted) is evaluated once on the test
users at every k of the experiment. Popularity and Item-CF with its defaults (neighbours
200, shrink 0: the untuned row of earlier tables) are reported untuned. Writes
``benchmarks/out/baselines.json`` (every grid point's validation score, the chosen params,
the test metrics, timings) and ``benchmarks/out/baselines.md``, merging with the sets
already there, so sets (and methods of a set) can be run one at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
SETS = ("ml100k", "ml-latest-small", "ml1m", "ml1m-sample", "lastfm", "amazon-book")
# smaller grids where one fit costs minutes (amazon-book EASE: one 25k x 25k inverse per point)
BIG_GRIDS = {
    "item-cf": {"neighbours": [200, 500], "shrink": [10.0, 100.0]},
    "rp3beta": {"alpha": [0.5, 0.8], "beta": [0.2, 0.3, 0.4], "neighbours": [200, 500]},
    "ease": {"l2": [50.0, 200.0, 1000.0]},
    "als": {"factors": [128], "regularization": [10.0, 100.0], "alpha": [10.0]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default="/tmp/dr-baselines", help="prepared data sets are cached here")
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    ap.add_argument("--methods", default="item-cf,rp3beta,ease", help="tuned methods (ease only up to "
                    "its max_items; als needs the `als` extra)")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy loads BLAS

    import torch

    from deep_retrieval.artifacts import atomic_write_json, atomic_write_text, read_json
    from deep_retrieval.baselines import EASE, ItemCF, Popularity
    from deep_retrieval.data.dataset import Dataset
    from deep_retrieval.evaluate import BASELINES, evaluate
    from deep_retrieval.experiment import ExperimentConfig, prepare_data
    from deep_retrieval.tuning import GRIDS, tune

    torch.set_num_threads(args.threads)
    file = OUT / "baselines.json"
    report = read_json(file, "baselines results") if file.is_file() else {}
    for name in args.sets.split(","):
        exp = ExperimentConfig.from_toml(ROOT / "experiments" / f"{name}.toml")
        cache = Path(args.work) / name
        if cache.is_dir():
            ds = Dataset.load(cache)
        else:
            ds = prepare_data(exp, args.data_root, cache, log=lambda _: None)
        ks, k, excl = list(exp.ks), exp.ks[0], exp.exclude_history
        big = len(ds.train.values) > 300_000 and ds.n_items > 10_000  # amazon-book
        methods = [m for m in args.methods.split(",") if m != "ease" or ds.n_items <= EASE().max_items]
        print(f"{name}: {ds.n_items} items, {len(ds.train)} training rows, {len(ds.train.values)} "
              f"interactions, {len(ds.val)} val / {len(ds.test)} test users; tune recall@{k}", flush=True)
        old = report.get(name, {}).get("methods", {})
        entry = {"n_items": ds.n_items, "n_train_rows": len(ds.train), "n_train_interactions":
                 int(len(ds.train.values)), "n_val_users": len(ds.val),
                 "n_test_users": int((ds.test.truth.lengths > 0).sum()), "ks": ks,
                 "exclude_history": excl, "tuned_on": f"validation recall@{k}", "methods": dict(old)}
        t0 = time.perf_counter()
        pop = evaluate(ds, {"popularity": Popularity().fit(ds)}, ks, exclude_history=excl, latency_users=0)
        entry["methods"]["popularity"] = {"params": {}, "validation": [], "test": pop["results"],
                                          "seconds": time.perf_counter() - t0}
        cf = evaluate(ds, {"item-cf (default)": ItemCF().fit(ds)}, ks, exclude_history=excl, latency_users=0)
        entry["methods"]["item-cf (default)"] = {"params": {"neighbours": 200, "shrink": 0.0},
                                                 "validation": [], "test": cf["results"]}
        for method in methods:
            grid = (BIG_GRIDS if big or (method == "ease" and ds.n_items > 10_000) else GRIDS)[method]
            cls = BASELINES[method]
            t0 = time.perf_counter()
            t = tune(cls, grid, ds, "recall", k, excl, keep_best=True, log=print)
            best = t.best
            fit_s = next(r["seconds"] for r in t.table if all(r[p] == v for p, v in best.items()))
            res = evaluate(ds, {method: t.recommender}, ks, exclude_history=excl, latency_users=20)
            entry["methods"][method] = {"params": best, "validation": t.table, "test": res["results"],
                                        "seconds_tuning": time.perf_counter() - t0,
                                        "seconds_fit_and_val": fit_s}
            res = res["results"]
            del t
            print(f"{name}: {method} {best}: test " + ", ".join(
                f"R@{r['k']} {r['recall']:.4f} NDCG@{r['k']} {r['ndcg']:.4f}" for r in res), flush=True)
        report[name] = entry
        OUT.mkdir(parents=True, exist_ok=True)
        atomic_write_json(file, report)
        atomic_write_text(OUT / "baselines.md", markdown(report))
    print(f"wrote {file} and {OUT / 'baselines.md'}")


def markdown(report: dict) -> str:
    lines = [
        "# Baselines tuned on validation users, measured on test users",
        "",
        "`benchmarks/tune_baselines.py`: each method's grid searched on the validation users "
        "(recall at the first k), the best point evaluated once on the test users. "
        "Metrics in percent.",
    ]
    for name, e in report.items():
        ks = e["ks"]
        lines += [
            "",
            f"## {name}",
            "",
            f"{e['n_items']:,} items, {e['n_train_interactions']:,} training interactions, "
            f"{e['n_test_users']:,} test users; training items "
            f"{'excluded' if e['exclude_history'] else 'not excluded'}; tuned on {e['tuned_on']}.",
            "",
            f"| method | params | val R@{ks[0]} | " + " | ".join(
                f"P@{k} | R@{k} | NDCG@{k}" for k in ks) + " |",
            "|---|---|---|" + "---|---|---|" * len(ks),
        ]
        for method, m in e["methods"].items():
            val = max((row["recall"] for row in m["validation"]), default=None)
            by_k = {r["k"]: r for r in m["test"]}
            params = ", ".join(f"{p}={v:g}" if isinstance(v, float) else f"{p}={v}"
                               for p, v in m["params"].items())
            cells = [method, params or "-", "-" if val is None else f"{100 * val:.2f}"]
            for k in ks:
                cells += [f"{100 * by_k[k][x]:.2f}" for x in ("precision", "recall", "ndcg")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
