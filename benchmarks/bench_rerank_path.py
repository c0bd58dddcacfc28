"""DR's own rerank of its candidates: the per-candidate gather vs one matmul over every item.

    python benchmarks/bench_rerank_path.py DATA MODEL [--beams 50,400,800] [--users 2000]

``retrieval.recommend`` (the torch path: a GPU model's ``recommend`` and the training's
validation) scores a batch's candidates by gathering their embeddings, or, when the batch has
at least ``DENSE_MIN_USERS`` users and its padded candidate rows hold at least V /
``DENSE_RERANK`` items, by one (users, V) matmul and a gather of the scores. This times it
(batch 1,024, and the median of 50 single-user calls; test users' histories, training items
excluded) with the gather only and with the default, and, in the same run, a CPU model's
``recommend`` (``DeepRetrieval.retrieve``: the numpy ``fast.Retriever``, the server's path), and
counts the rows whose top-20 ids differ from the default's.
Writes benchmarks/out/rerank_path.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import deep_retrieval.retrieval as retrieval
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.model import DeepRetrieval

OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("model")
    ap.add_argument("--beams", default="50,400,800")
    ap.add_argument("--users", type=int, default=2000)
    args = ap.parse_args()
    ds, dr = Dataset.load(args.data), DeepRetrieval.load(args.model)
    hist = ds.test.hist.take(np.arange(min(args.users, len(ds.test))))
    default = retrieval.DENSE_RERANK
    rows = []
    for B in [int(b) for b in args.beams.split(",")]:
        got = {}
        for way, dense in (("gather", 0), ("matmul when dense", default), ("serving", None)):
            if dense is None:
                def rec(h, B=B):
                    ids, _ = dr.recommend(h, 20, exclude_history=True, B=B, blend=False)
                    return ids, dr.last_items_scored
            else:
                retrieval.DENSE_RERANK = dense

                def rec(h, B=B):
                    ids, _, scored = retrieval.recommend(dr.net, dr._index, dr.config, h, 20, B, True,
                                                         tables=dr._prefix_tables())
                    return ids, scored
            rec(hist.take(np.arange(8)))  # warm-up
            t = time.perf_counter()
            ids, scored = rec(hist)
            batched = (time.perf_counter() - t) * 1e3 / len(hist)
            single = []
            for u in range(50):
                t = time.perf_counter()
                rec(hist.take(np.array([u])))
                single.append((time.perf_counter() - t) * 1e3)
            got[way] = batched, ids, float(np.median(single)), float(np.mean(scored))
        retrieval.DENSE_RERANK = default
        differ = int((got["gather"][1] != got["matmul when dense"][1]).any(axis=1).sum())
        differ_serving = int((got["serving"][1] != got["matmul when dense"][1]).any(axis=1).sum())
        rows.append({"B": B, "items_scored": got["gather"][3],
                     "ms_per_user_gather": got["gather"][0],
                     "ms_per_user_default": got["matmul when dense"][0], "rows_differing": differ,
                     "ms_batch1_gather": got["gather"][2], "ms_batch1_default": got["matmul when dense"][2],
                     "ms_per_user_serving": got["serving"][0], "ms_batch1_serving": got["serving"][2],
                     "rows_differing_serving": differ_serving})
        print(rows[-1], flush=True)
    out = {"data": args.data, "model": args.model, "users": len(hist), "n_items": ds.n_items,
           "dense_rerank": default, "rows": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "rerank_path.json").write_text(json.dumps(out, indent=1) + "\n")
    md = (f"# DR's rerank: gather vs matmul\n\n`python benchmarks/bench_rerank_path.py {args.data} "
          f"{args.model} --beams {args.beams} --users {args.users}`\n\n{len(hist)} test users, "
          f"{ds.n_items:,} items, batch 1,024, ms per user (same run):\n\n"
          "| B | items scored | gather | default (matmul from V / 8) | speed-up | top-20s that differ "
          "| batch 1: gather | batch 1: default | serving (Retriever) | batch 1: serving "
          "| serving's top-20s that differ from the default's |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n"
          + "".join(f"| {r['B']} | {r['items_scored']:,.0f} | {r['ms_per_user_gather']:.3f} | "
                    f"{r['ms_per_user_default']:.3f} | "
                    f"{r['ms_per_user_gather'] / r['ms_per_user_default']:.1f}x | "
                    f"{r['rows_differing']} | {r['ms_batch1_gather']:.3f} | {r['ms_batch1_default']:.3f} | "
                    f"{r['ms_per_user_serving']:.3f} | {r['ms_batch1_serving']:.3f} | "
                    f"{r['rows_differing_serving']} |\n"
                    for r in rows))
    (OUT / "rerank_path.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
