"""The serving cost of a model's blend: ``Served.search`` with the blend's term and without it.

    python benchmarks/bench_serve_blend.py DATA MODEL [--beams 50,800] [--users 500] [--batch 256]

MODEL carries a blend (``dr train`` with a ``[blend]`` table). The server's path (torch encoder,
numpy ``fast.Retriever``, plus ``w * LogMean(scorer)`` of the candidates) is timed on DATA's
test users, history excluded, k = 20: the median of single-user calls over ``--users`` users and
the time per user in batches of ``--batch``, once as the model serves (blend) and once with the
blend's term left out (the reranker alone), in the same process. The blended top-20 is compared
with the same ranking by the torch path (``rerank.Reranked`` with the model's ``final_scorer``,
what ``recommend`` runs on a GPU): rows whose ids differ are counted (ties may swap). Writes
benchmarks/out/serve_blend.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from deep_retrieval.data.dataset import Dataset
from deep_retrieval.rerank import Reranked
from deep_retrieval.serve import Served

OUT = Path(__file__).parent / "out"


def timed(served: Served, hists: list, B: int, batch: int, blend: bool) -> tuple[float, float, np.ndarray]:
    """(median ms of one-user calls, ms per user in batches, ids (n, 20) of the batched calls)."""
    served.search(hists[:4], 20, B, exclude_history=True, blend=blend)  # warm-up
    single = []
    for h in hists:
        t = time.perf_counter()
        served.search([h], 20, B, exclude_history=True, blend=blend)
        single.append((time.perf_counter() - t) * 1e3)
    ids, t = [], time.perf_counter()
    for lo in range(0, len(hists), batch):
        ids.append(served.search(hists[lo : lo + batch], 20, B, exclude_history=True, blend=blend)[0])
    per_user = (time.perf_counter() - t) * 1e3 / len(hists)
    return float(np.median(single)), per_user, np.concatenate(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("model")
    ap.add_argument("--beams", default="50,800")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    ds, served = Dataset.load(args.data), Served(args.model)
    final = served.model.final_scorer()
    if final is None:
        raise SystemExit(f"error: model {args.model} carries no blend (w > 0): nothing to compare")
    hist = ds.test.hist.take(np.arange(min(args.users, len(ds.test))))
    hists = [hist[i] for i in range(len(hist))]
    rows = []
    for B in [int(b) for b in args.beams.split(",")]:
        b1, batched, ids = timed(served, hists, B, args.batch, blend=True)
        want, _ = Reranked(served.model, final, B).recommend(hist, 20, exclude_history=True)
        differ = int((ids != want).any(axis=1).sum())
        b1_off, batched_off, _ = timed(served, hists, B, args.batch, blend=False)
        rows.append({"B": B, "b1_ms_blend": b1, "b1_ms_reranker": b1_off, "batched_ms_blend": batched,
                     "batched_ms_reranker": batched_off, "rows_differing_from_recommend": differ})
    cmd = (f"python benchmarks/bench_serve_blend.py {args.data} {args.model} --beams {args.beams} "
           f"--users {args.users} --batch {args.batch}")
    out = {"command": cmd, "machine": f"{platform.platform()}, {platform.processor()}",
           "model": served.meta, "users": len(hists), "rows": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "serve_blend.json").write_text(json.dumps(out, indent=2) + "\n")
    b = served.meta["blend"]
    lines = [f"# Serving a model's blend ({b['scorer']}, w {b['w']}, eps {b['eps']})", "",
             f"`{cmd}`", "",
             f"{served.n_items:,} items, {len(hists)} test users, k 20, history excluded; ms per user.", "",
             "| B | batch 1, blend | batch 1, reranker only | batched, blend | batched, reranker only "
             "| top-20 rows differing from the torch path |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['B']} | {r['b1_ms_blend']:.3f} | {r['b1_ms_reranker']:.3f} | "
                     f"{r['batched_ms_blend']:.3f} | {r['batched_ms_reranker']:.3f} | "
                     f"{r['rows_differing_from_recommend']} |")
    (OUT / "serve_blend.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
