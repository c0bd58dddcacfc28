"""DR's candidates reranked by another recommender ("DR + RP3beta rerank", issue 11).

    python benchmarks/bench_rerank.py DATA --config ml1m --scorer rp3beta:alpha=0.25,beta=0.6,neighbours=500

Trains DR (or loads ``--model``), fits the scorer, and evaluates on the test users: DR (its
own reranker), the scorer over all items, and ``Reranked(dr, scorer)`` (DR's B-path
candidates ordered by the scorer), with recall of the rerank against the scorer over all
items. The scorer's parameters come from validation users (benchmarks/tune_baselines.py).
Writes benchmarks/out/NAME.json and NAME.md (``--name``, default rerank).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.evaluate import build_methods, evaluate, format_table
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.rerank import Reranked

OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--config", default="ml1m")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--model", default=None, help="a trained model directory instead of training")
    ap.add_argument("--scorer", default="rp3beta:alpha=0.25,beta=0.6,neighbours=500")
    ap.add_argument("--k", default="10,200")
    ap.add_argument("--exclude-history", action="store_true")
    ap.add_argument("--beam", type=int, default=None, help="DR's beam B (default: the model's)")
    ap.add_argument("--name", default="rerank", help="output files benchmarks/out/NAME.json and NAME.md")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    ds = Dataset.load(args.data)
    t = time.perf_counter()
    if args.model:
        dr = DeepRetrieval.load(args.model)
    else:
        dr = DeepRetrieval(load_config(args.config, [*args.overrides, "train.progress=false"])).fit(ds)
    t_dr = time.perf_counter() - t
    if args.beam is not None:
        dr.config.beam.B = args.beam
    scorer = next(iter(build_methods([args.scorer], ds).values()))
    name = args.scorer.split(":")[0]
    methods = {"dr": dr, name: scorer, f"dr+{name}": Reranked(dr, scorer)}
    res = evaluate(ds, methods, ks, split="test", exclude_history=args.exclude_history)
    table = format_table(res)
    rows = {(r["method"], r["k"]): r for r in res["results"]}
    ratio = {k: rows[(f"dr+{name}", k)]["recall"] / rows[(name, k)]["recall"] for k in ks}
    out = {"data": args.data, "config": args.config, "scorer": args.scorer, "seconds_train_dr": t_dr,
           "B": dr.config.beam.B, "results": res["results"], "recall_rerank_over_scorer": ratio}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    cmd = f"python benchmarks/bench_rerank.py {args.data} --scorer {args.scorer}"
    cmd += f" --model {args.model}" if args.model else f" --config {args.config}"
    cmd += "".join(f" --set {o}" for o in args.overrides)
    cmd += f" --k {args.k}" + " --exclude-history" * args.exclude_history + f" --name {args.name}"
    cmd += f" --beam {args.beam}" if args.beam is not None else ""
    md = (f"# DR + {name} rerank\n\n`{cmd}`\n\n```\n{table}\n```\n\n"
          + "".join(f"- recall@{k}: dr+{name} / {name} over all items = {v:.3f}\n" for k, v in ratio.items()))
    (OUT / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
