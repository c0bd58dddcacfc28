"""Recall probe at one corpus size: train DR with bench_scale's settings, then recall@200 of
DR against the exact top-200 of its own reranker at several B, batched (512 test users).

    python benchmarks/probe_scale.py --V 1.5e6 --train-examples 4000000 [--msteps 3]
        [--em-S 10] [--eta 0.999] [--beams 10,25,50,100,200,400] [--out benchmarks/out/scale_probe.json]
        [--save MODEL_DIR | --load MODEL_DIR]

``--save`` keeps the trained model; ``--load`` measures a saved one again (the same seeded data
is generated, training is skipped), e.g. for quiet batch-1 latencies after a loaded run.

Also reports how spread the exact top-200 lists are over users (distinct items, share in the
200 most common): with little training the reranker is mostly popularity and recall is easy.
Batch-1 latency (median over up to 200 test users, ``bench_scale.per_call_ms``) of DR per B and
of exact numpy search in the same run; no targets here, bench_scale.py is the benchmark.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import bench_scale as bs  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep_retrieval.artifacts import check_output  # noqa: E402
from deep_retrieval.data.synth import generate  # noqa: E402
from deep_retrieval.errors import DRError  # noqa: E402
from deep_retrieval.fast import Retriever  # noqa: E402
from deep_retrieval.model import DeepRetrieval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=float, default=1.5e6)
    ap.add_argument("--train-examples", type=int, default=1_000_000)
    ap.add_argument("--msteps", type=int, default=3)
    ap.add_argument("--em-S", type=int, default=10)
    ap.add_argument("--eta", type=float, default=None, help="streaming decay (default: the config's)")
    ap.add_argument("--beams", default="10,25,50,100,200,400", help="the B measured, comma-separated")
    ap.add_argument("--out", default=str(bs.OUT / "scale_probe.json"))
    ap.add_argument("--save", default=None, help="write the trained model here")
    ap.add_argument("--load", default=None, help="measure this saved model instead of training one")
    a = ap.parse_args()
    if a.save:
        try:  # before any work: never over something else
            check_output(a.save, "model", replace=False)
        except DRError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    args = argparse.Namespace(users=300_000, interactions=10_000_000, val_users=0, queries=1000,
                              em_S=a.em_S, msteps=a.msteps, epochs_joint=1, epochs_dr=0,
                              train_examples=a.train_examples)
    V = int(a.V)
    ds, _ = generate(bs.synth_config(V, args))
    cfg = bs.dr_config(args)
    if a.eta is not None:
        cfg.em.eta = a.eta
    t0 = time.perf_counter()
    if a.load:
        m = DeepRetrieval.load(a.load)
        cfg = m.config
    else:
        m = DeepRetrieval(cfg).fit(ds, log=lambda s: print(" ", s, flush=True))
        if a.save:
            m.save(a.save)
    res: dict = {"V": V, "train_s": None if a.load else time.perf_counter() - t0, "loaded": a.load,
                 "config": cfg.to_dict(), "paths": m.log[-1]["paths"]}
    torch.set_num_threads(1)
    U = m.user_embeddings(ds.test.hist, "rr")[:512]
    E = m.net.reranker.item_emb.weight.detach().numpy()
    t0 = time.perf_counter()
    truth = bs.exact_numpy(E, U, bs.TOPK)
    res["exact_ms_per_user_b512"] = (time.perf_counter() - t0) / len(U) * 1e3
    res["exact_b1"] = bs.per_call_ms(lambda u: bs.exact_numpy(E, u, bs.TOPK), U[:200])
    ids, cnt = np.unique(truth, return_counts=True)
    common = np.isin(truth, ids[np.argsort(-cnt)[: bs.TOPK]]).mean()
    res["exact_top200_spread"] = {"users": len(U), "distinct_items": int(len(ids)),
                                  "share_in_200_most_common": float(common)}
    r = Retriever.from_model(m)
    res["dr"] = []
    for B in [int(b) for b in a.beams.split(",")]:
        t0 = time.perf_counter()
        found, _, n_cand = r.search(U, U, bs.TOPK, B)
        res["dr"].append({"B": B, "recall_at_200": bs.recall(found, truth),
                          "candidates_mean": float(n_cand.mean()),
                          "ms_per_user_b512": (time.perf_counter() - t0) / len(U) * 1e3,
                          "b1": bs.per_call_ms(lambda u, B=B: r.search(u, u, bs.TOPK, B), U[:200])})
        print(res["dr"][-1], flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("config", "dr")}, default=float))


if __name__ == "__main__":
    main()
