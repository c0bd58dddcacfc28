"""DR's candidates reranked by another recommender ("DR + RP3beta rerank", issue 11).

    python benchmarks/bench_rerank.py DATA --config ml1m --scorer rp3beta:alpha=0.25,beta=0.6,neighbours=500

Trains DR (or loads ``--model``), fits the scorer, and evaluates on the test users: DR (its
own reranker), the scorer over all items, and ``Reranked(dr, scorer)`` (DR's B-path
candidates ordered by the scorer), with recall of the rerank against the scorer over all
items. The scorer's parameters come from validation users (benchmarks/tune_baselines.py).

With ``--blend W,W,...`` it also blends DR's reranker with the scorer (``Blend`` of DR's
reranker scores, weight 1, and ``LogMean(scorer, eps)``, weight W): the weight and eps are
picked on the validation users by recall@(first k) of ``Reranked(dr, blend)`` at the same B,
then the test users get the blend over all items and DR + blend.
Writes benchmarks/out/NAME.json and NAME.md (``--name``, default rerank).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.evaluate import build_methods, evaluate, format_table
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.rerank import Reranked, pick_blend

OUT = Path(__file__).parent / "out"


def run_one(args, ds, ks, overrides, model_dir):
    """Train (or load) one DR, pick the blend on validation users, evaluate on test users."""
    t = time.perf_counter()
    if model_dir:
        dr = DeepRetrieval.load(model_dir)
    else:
        dr = DeepRetrieval(load_config(args.config, [*overrides, "train.progress=false"])).fit(ds)
    t_dr = time.perf_counter() - t
    if args.beam is not None:
        dr.config.beam.B = args.beam
    scorer = next(iter(build_methods([args.scorer], ds).values()))
    name = args.scorer.split(":")[0]
    methods = {"dr": dr, name: scorer, f"dr+{name}": Reranked(dr, scorer)}
    val_rows, blend_choice = [], None
    if args.blend:
        blend, val_rows = pick_blend(dr, scorer, ds, args.blend.split(","), args.eps.split(","), ks[0],
                                     args.exclude_history)
        for r in val_rows:
            print(f"validation: w {r['w']} eps {r['eps']} recall@{ks[0]} {r['recall']:.4f}", flush=True)
        blend_choice = {"w": blend.weights[1], "eps": blend.parts[1].eps}
        methods.update({"blend": blend, "dr+blend": Reranked(dr, blend)})
    res = evaluate(ds, methods, ks, split="test", exclude_history=args.exclude_history)
    print(format_table(res), flush=True)
    return {"seconds_train_dr": t_dr, "B": dr.config.beam.B, "results": res["results"],
            "blend_validation": val_rows, "blend": blend_choice}


def value(run: dict, method: str, k: int, key: str) -> float:
    return next(r[key] for r in run["results"] if r["method"] == method and r["k"] == k)


def summary(runs: list[dict], ks: list[int]) -> tuple[list[dict], str]:
    """Mean and std over runs of every method's P / R / NDCG at each k, as rows and a table."""
    methods = list(dict.fromkeys(r["method"] for r in runs[0]["results"]))
    rows, lines = [], []
    head = "| method | " + " | ".join(f"P@{k} | R@{k} | NDCG@{k}" for k in ks) + " | items scored |"
    lines += [head, "|" + "---|" * (2 + 3 * len(ks))]
    for m in methods:
        cells, row = [], {"method": m}
        for k in ks:
            for metric in ("precision", "recall", "ndcg"):
                v = np.array([100 * value(run, m, k, metric) for run in runs])
                sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                row[f"{metric}@{k}"] = [float(v.mean()), sd]
                cells.append(f"{v.mean():.2f} ± {sd:.2f}" if len(v) > 1 else f"{v.mean():.2f}")
        scored = np.mean([value(run, m, ks[0], "items_scored_per_user") for run in runs])
        rows.append(row)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {scored:,.0f} |")
    return rows, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--config", default="ml1m")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--model", default=None,
                    help="trained model directories instead of training (comma list, one per run)")
    ap.add_argument("--seeds", default="0", help="train.seed of each run (comma list; without --model)")
    ap.add_argument("--scorer", default="rp3beta:alpha=0.25,beta=0.6,neighbours=500")
    ap.add_argument("--k", default="10,200")
    ap.add_argument("--exclude-history", action="store_true")
    ap.add_argument("--beam", type=int, default=None, help="DR's beam B (default: the model's)")
    ap.add_argument("--blend", default=None, help="weights W of LogMean(scorer) to try on validation users")
    ap.add_argument("--eps", default="0.01", help="eps of LogMean to try (comma list)")
    ap.add_argument("--runs-from", default=None,
                    help="summarise the runs of earlier outputs (comma list of NAME.json) instead of running")
    ap.add_argument("--name", default="rerank", help="output files benchmarks/out/NAME.json and NAME.md")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    name = args.scorer.split(":")[0]
    if args.model:
        plan = [(m, args.overrides) for m in args.model.split(",")]
    else:
        plan = [(None, [*args.overrides, f"train.seed={s}"]) for s in args.seeds.split(",")]
    if args.runs_from:  # e.g. runs split over two processes
        runs = [run for f in args.runs_from.split(",") for run in json.loads(Path(f).read_text())["runs"]]
    else:
        ds = Dataset.load(args.data)
        runs = [run_one(args, ds, ks, overrides, model) for model, overrides in plan]
    rows, table = summary(runs, ks)

    def ratio(a: str, b: str) -> dict[int, float]:
        return {k: float(np.mean([value(run, a, k, "recall") / value(run, b, k, "recall") for run in runs]))
                for k in ks}

    out = {"data": args.data, "config": args.config, "scorer": args.scorer, "runs": runs, "summary": rows,
           "recall_rerank_over_scorer": ratio(f"dr+{name}", name),
           "recall_dr_blend_over_blend": ratio("dr+blend", "blend") if args.blend else None}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    cmd = f"python benchmarks/bench_rerank.py {args.data} --scorer {args.scorer}"
    cmd += f" --model {args.model}" if args.model else f" --config {args.config} --seeds {args.seeds}"
    cmd += "".join(f" --set {o}" for o in args.overrides)
    cmd += f" --k {args.k}" + " --exclude-history" * args.exclude_history + f" --name {args.name}"
    cmd += f" --beam {args.beam}" if args.beam is not None else ""
    cmd += f" --blend {args.blend} --eps {args.eps}" if args.blend else ""
    cmd += f" --runs-from {args.runs_from}" if args.runs_from else ""
    md = (f"# DR + {name} rerank\n\n`{cmd}`\n\n{len(runs)} run(s), test users, metrics in percent, "
          f"mean ± std over runs (ddof 1); B = {runs[0]['B']}; DR trained in "
          + ", ".join(f"{r['seconds_train_dr']:.0f}" for r in runs) + " s.\n\n" + table + "\n"
          + "".join(f"- recall@{k}: dr+{name} / {name} over all items = {v:.3f} (mean over runs)\n"
                    for k, v in out["recall_rerank_over_scorer"].items()))
    if args.blend:
        md += (f"\nBlend = DR's reranker + w x LogMean({name}, eps), w and eps picked per run on "
               f"validation recall@{ks[0]} of dr+blend: "
               + ", ".join(f"w {r['blend']['w']} eps {r['blend']['eps']}" for r in runs) + "\n\n"
               + "".join(f"- recall@{k}: dr+blend / blend over all items = {v:.3f} (mean over runs)\n"
                         for k, v in out["recall_dr_blend_over_blend"].items()))
    (OUT / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
