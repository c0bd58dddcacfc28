"""Recall probe at one corpus size: train DR with bench_scale's settings, then recall@200 of
DR against the exact top-200 of its own reranker at several B, batched (512 test users).

    python benchmarks/probe_scale.py --V 1.5e6 --train-examples 4000000 [--msteps 3]
        [--em-S 10] [--eta 0.999] [--beams 10,25,50,100,200,400] [--rounds 3] [--path-major]
        [--out benchmarks/out/scale_probe.json]
        [--save MODEL_DIR | --load MODEL_DIR]

``--save`` keeps the trained model; ``--load`` measures a saved one again (the same seeded data
is generated, training is skipped), e.g. for quiet batch-1 latencies after a loaded run.

Also reports how spread the exact top-200 lists are over users (distinct items, share in the
200 most common): with little training the reranker is mostly popularity and recall is easy.
Batch-1 latency (median over up to 200 test users, ``bench_scale.per_call_ms``) of DR per B and
of exact search with numpy, torch and faiss ``IndexFlatIP`` (when the ``ann`` extra is
installed), every searcher in turn for ``--rounds`` rounds (the median over rounds is kept, and
each round's fastest-exact / DR ratio); ``--path-major`` times the same model served from a
path-major copy of its item embeddings too (``beam.path_major``) and checks that it returns the
same top-200 sets. No targets here, bench_scale.py is the benchmark.
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
    ap.add_argument("--rounds", type=int, default=3, help="batch-1 timing rounds (every searcher in turn)")
    ap.add_argument("--path-major", action="store_true",
                    help="also time the model served from a path-major copy of its item embeddings")
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
    ids, cnt = np.unique(truth, return_counts=True)
    common = np.isin(truth, ids[np.argsort(-cnt)[: bs.TOPK]]).mean()
    res["exact_top200_spread"] = {"users": len(U), "distinct_items": int(len(ids)),
                                  "share_in_200_most_common": float(common)}
    r = Retriever.from_model(m)
    beams = [int(b) for b in a.beams.split(",")]
    res["dr"] = []
    for B in beams:
        t0 = time.perf_counter()
        found, _, n_cand = r.search(U, U, bs.TOPK, B)
        res["dr"].append({"B": B, "recall_at_200": bs.recall(found, truth),
                          "candidates_mean": float(n_cand.mean()),
                          "ms_per_user_b512": (time.perf_counter() - t0) / len(U) * 1e3})
        print(res["dr"][-1], flush=True)

    # batch 1: every searcher in turn, a.rounds times (the machine's speed drifts; compare within
    # a round), the median of 200 users per searcher and round
    Et = torch.from_numpy(E)
    searchers = {"exact numpy": lambda u: bs.exact_numpy(E, u, bs.TOPK),
                 "exact torch": lambda u: bs.exact_torch(Et, u, bs.TOPK)}
    try:  # faiss: the `ann` extra
        import faiss

        faiss.omp_set_num_threads(1)
        flat = faiss.IndexFlatIP(E.shape[1])
        flat.add(E)
        searchers["exact faiss"] = lambda u: flat.search(u, bs.TOPK)[1]
    except ImportError:
        pass
    for B in beams:
        searchers[f"dr B={B}"] = lambda u, B=B: r.search(u, u, bs.TOPK, B)
    if a.path_major:  # the same model served from the path-major copy of its item embeddings
        pm = Retriever.from_parts(m.net.structure, m._index, E, path_major=True)
        for B in beams:
            searchers[f"dr path-major B={B}"] = lambda u, B=B: pm.search(u, u, bs.TOPK, B)
        same = [np.array_equal(np.sort(pm.search(U[i : i + 1], U[i : i + 1], bs.TOPK, beams[0])[0]),
                               np.sort(r.search(U[i : i + 1], U[i : i + 1], bs.TOPK, beams[0])[0]))
                for i in range(50)]
        res["path_major_same_top200_share"] = float(np.mean(same))
    rounds = [{name: bs.per_call_ms(f, U[:200])["b1_median_ms"] for name, f in searchers.items()}
              for _ in range(a.rounds)]
    b1 = {name: float(np.median([x[name] for x in rounds])) for name in searchers}
    fastest = min(v for name, v in b1.items() if name.startswith("exact"))
    res["b1_rounds"], res["b1_median_ms"] = rounds, b1
    for row in res["dr"]:
        for way in ["dr"] + (["dr path-major"] if a.path_major else []):
            key = f"{way} B={row['B']}"
            tag = "" if way == "dr" else "_path_major"
            row[f"b1_median_ms{tag}"] = b1[key]
            row[f"fastest_exact_over_dr{tag}"] = fastest / b1[key]
            row[f"per_round_fastest_exact_over_dr{tag}"] = [
                min(v for name, v in x.items() if name.startswith("exact")) / x[key] for x in rounds]
    print(json.dumps(b1), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("config", "dr")}, default=float))


if __name__ == "__main__":
    main()
