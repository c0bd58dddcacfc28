"""Compare DR configs on the VALIDATION users of a prepared data set (never the test users).

    python benchmarks/tune_val.py DATA --config ml-small --set structure.K=20 --set ...

Prints validation P/R@k of DR, DR's reranker by brute force, the YouTube-DNN twin and
Item-CF, with training times; the shipped configs record the choices made with it.
"""

from __future__ import annotations

import argparse
import time

from deep_retrieval.baselines import BruteForce, ItemCF
from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.evaluate import evaluate
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.youtube_dnn import YouTubeDNN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--exclude-history", action="store_true")
    ap.add_argument("--no-twin", action="store_true", help="skip YouTube-DNN and Item-CF")
    args = ap.parse_args()
    ds = Dataset.load(args.data)
    cfg = load_config(args.config, tuple(args.overrides))
    cfg.train.progress = False
    t0 = time.perf_counter()
    dr = DeepRetrieval(cfg).fit(ds, log=print)
    t_dr = time.perf_counter() - t0
    methods = {"dr": dr, "dr-exact": BruteForce(dr.net.reranker.item_embeddings(), encode=dr.user_embeddings)}
    if not args.no_twin:
        t0 = time.perf_counter()
        methods["youtube-dnn"] = YouTubeDNN(cfg).fit(ds, log=print)
        print(f"youtube-dnn trained in {time.perf_counter() - t0:.0f} s")
        methods["item-cf"] = ItemCF().fit(ds)
    res = evaluate(ds, methods, [args.k], split="val", exclude_history=args.exclude_history, latency_users=5)
    print(f"DR trained in {t_dr:.0f} s; validation users: {res['n_users']}")
    for r in res["results"]:
        print(f"VAL {r['method']:12s} P@{args.k} {r['precision']:.4f} R@{args.k} {r['recall']:.4f} "
              f"NDCG {r['ndcg']:.4f} scored {r['items_scored_per_user']:.0f}")


if __name__ == "__main__":
    main()
