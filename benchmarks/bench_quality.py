"""Quality and training-time benchmark of DR against its brute-force twin and the baselines.

    python benchmarks/bench_quality.py synth            # the built-in planted synthetic set
    python benchmarks/bench_quality.py ml1m --data DIR  # a prepared ml-1m (dr prepare pairs.csv.gz)

Trains DR with a built-in config (``--config``, ``--set`` overrides as in `dr train`),
evaluates dr / brute-force / item-cf / popularity on the test users, and writes
``benchmarks/out/quality_<name>.json`` (the `dr evaluate` shape plus training times,
path statistics and the ratios the targets are stated in) and a section of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from deep_retrieval.baselines import ItemCF, Popularity
from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.data.synth import SynthConfig, cluster_purity, generate
from deep_retrieval.evaluate import evaluate, format_table
from deep_retrieval.model import DeepRetrieval

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="synth, or a label for --data")
    ap.add_argument("--data", help="prepared data set directory (not needed for synth)")
    ap.add_argument("--config", default=None, help="built-in config name or TOML file")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--k", default="10,200")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]

    planted = None
    if args.name == "synth":
        ds, planted = generate(SynthConfig.demo())
        config = args.config or "demo"
    else:
        ds = Dataset.load(args.data)
        config = args.config or args.name
    cfg = load_config(config, tuple(args.overrides))
    cfg.train.progress = False

    t0 = time.perf_counter()
    model = DeepRetrieval(cfg).fit(ds, log=print)
    train_s = time.perf_counter() - t0
    methods = {**model.as_recommenders(), "item-cf": ItemCF().fit(ds), "popularity": Popularity().fit(ds)}
    res = evaluate(ds, methods, ks, split="test", dataset_name=args.data or "synthetic demo")
    print(format_table(res))

    rows = {(r["method"], r["k"]): r for r in res["results"]}
    ratios = {
        f"dr_over_brute_force_recall@{k}": rows[("dr", k)]["recall"]
        / max(rows[("brute-force", k)]["recall"], 1e-12)
        for k in ks
    }
    last = model.log[-1]
    out = {
        "name": args.name,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.platform()}, nproc {os.cpu_count()}",
        "config": cfg.to_dict(),
        "train_seconds": train_s,
        "epochs": [
            {k: e.get(k) for k in ("epoch", "phase", "seconds_e_step", "seconds_m_step",
                                   "seconds_score_collection", "seconds_coordinate_descent",
                                   "Q_str", "Q_softmax", "candidates_per_user")}
            for e in model.log
        ],
        "paths": last["paths"],
        "candidates_share": last["candidates_per_user"] / ds.n_items,
        "ratios": ratios,
        "evaluate": res,
    }
    if planted is not None:
        rng = np.random.default_rng(0)
        out["path_purity"] = cluster_purity(model.path_groups(), planted.item_clusters)
        out["path_purity_shuffled"] = cluster_purity(
            model.path_groups(rng.permutation(ds.n_items)), planted.item_clusters
        )
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / f"quality_{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")

    lines = [
        f"\n## Quality and training time: {args.name} ({out['date']})\n",
        f"`python benchmarks/bench_quality.py {args.name}"
        + (f" --data {args.data}" if args.data else "")
        + (f" --config {args.config}" if args.config else "")
        + "".join(f" --set {o}" for o in args.overrides)
        + f"` on {out['machine']}.\n",
        "| method | k | precision | recall | NDCG | items scored / user |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["results"]:
        lines.append(f"| {r['method']} | {r['k']} | {r['precision']:.4f} | {r['recall']:.4f} | "
                     f"{r['ndcg']:.4f} | {r['items_scored_per_user']:.0f} |")
    e_s = sum(e["seconds_e_step"] for e in model.log)
    m_s = sum(e["seconds_m_step"] for e in model.log)
    lines += [
        "",
        f"- training {train_s:.0f} s for {len(model.log)} epochs: E-steps {e_s:.0f} s, M-steps {m_s:.0f} s",
        "- DR recall / brute-force recall: "
        + ", ".join(f"@{k.split('@')[1]} {v:.3f}" for k, v in ratios.items()),
        f"- paths: {last['paths']['non_empty']} non-empty, largest {last['paths']['largest']}, "
        f"mean {last['paths']['mean']:.1f}; "
        f"DR scores {100 * out['candidates_share']:.1f}% of the corpus per user",
    ]
    if planted is not None:
        lines.append(f"- path purity {out['path_purity']:.3f} (shuffled {out['path_purity_shuffled']:.3f})")
    with open(HERE / "README.md", "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
