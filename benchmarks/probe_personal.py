"""Why DR misses part of its own reranker's exact top-200 on a personal workload (issue 12).

    python benchmarks/probe_personal.py --V 1e4 [--config paper-amazon] [--set em.S=50 ...]
        [--epochs 20] [--patience 3] [--out benchmarks/out/personal_probe.json]

Generates ``dr synth --preset personal`` data at V items, trains DR with the given config
(validation recall@200 after every epoch, early stopping with ``--patience`` on it; test
users never read during training), then, on up to 512 test users, from their reranker
embeddings:

- how personal the exact top-200 lists of DR's own reranker are (distinct items, share in
  the 200 most common: what bench_scale reports);
- DR recall@200 against that exact top-200 at several B (``fast.Retriever``, the serving path);
- where the misses are: the share of exact top-200 items none of whose J paths is in the
  user's top-B beam ("not on a beamed path"), and among those, the share whose paths no test
  user's beam reaches at all ("on an unreachable path");
- the paths: non-empty, largest, mean size.

One thread. Prints a line per B and writes one JSON object (appended to ``--out``'s list).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import bench_scale as bs  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep_retrieval.config import load_config  # noqa: E402
from deep_retrieval.data.dataset import Ragged  # noqa: E402
from deep_retrieval.data.synth import SynthConfig, cluster_purity, generate  # noqa: E402
from deep_retrieval.fast import Retriever  # noqa: E402
from deep_retrieval.model import DeepRetrieval  # noqa: E402
from deep_retrieval.structure import to_flat  # noqa: E402

OUT = Path(__file__).parent / "out"
TOPK = bs.TOPK
BEAMS = (10, 25, 50, 100, 200)


def miss_breakdown(r: Retriever, assignment: np.ndarray, U: np.ndarray, truth: np.ndarray, B: int):
    """(share of truth items with no path in the user's beam, share with no path in any beam)."""
    paths = to_flat(r.beam(U, B)[0], r.K)  # (n, B) flat path ids
    reached = np.unique(paths[paths >= 0])
    on_beam = np.zeros(truth.shape, dtype=bool)
    for i in range(len(U)):
        on_beam[i] = np.isin(assignment[truth[i]], paths[i]).any(axis=1)
    anywhere = np.isin(assignment[truth], reached).any(axis=2)  # (n, k)
    return float(1 - on_beam.mean()), float(1 - anywhere.mean()), int(len(reached))


def _node_purity(nodes: np.ndarray, item_clusters: np.ndarray) -> float:
    """cluster_purity of the groups {items whose paths start at node n} (distinct (n, item) pairs)."""
    V, J = nodes.shape
    key = np.unique(nodes.reshape(-1) * V + np.repeat(np.arange(V), J))  # sorted (node, item)
    node, item = np.divmod(key, V)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(node))])
    return cluster_purity(Ragged(item, offsets), item_clusters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=float, default=1e4)
    ap.add_argument("--config", default="paper-amazon")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--epochs", type=int, default=20, help="most joint epochs")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(OUT / "personal_probe.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    V = int(a.V)
    t0 = time.perf_counter()
    ds, planted = generate(SynthConfig.personal(n_items=V, seed=a.seed))
    t_data = time.perf_counter() - t0
    cfg = load_config(a.config, [f"train.epochs_joint={a.epochs}", f"train.patience={a.patience}",
                                 "train.val_k=200", "train.threads=1", "train.progress=false",
                                 f"train.seed={a.seed}", *a.overrides])
    t0 = time.perf_counter()
    m = DeepRetrieval(cfg).fit(ds, log=lambda s: print(" ", s, flush=True))
    res: dict = {"label": a.label, "V": V, "overrides": a.overrides, "data_s": t_data,
                 "train_s": time.perf_counter() - t0, "epochs": len(m.log),
                 "val_recall_200": [e.get("val_recall@200") for e in m.log], "paths": m.log[-1]["paths"]}
    hist = ds.test.hist.take(np.arange(min(512, len(ds.test.hist))))
    U, Us = m.user_embeddings(hist, "rr"), m.user_embeddings(hist, "str")  # (n, e) each
    E = m.net.reranker.item_emb.weight.detach().numpy()
    truth = bs.exact_numpy(E, U, TOPK)  # (n, TOPK) best first
    ids, cnt = np.unique(truth, return_counts=True)
    res["exact_top200_spread"] = {
        "users": len(U), "distinct_items": int(len(ids)),
        "share_in_200_most_common": float(np.isin(truth, ids[np.argsort(-cnt)[:TOPK]]).mean())}
    r = Retriever.from_model(m)
    assignment = np.asarray(m.assignment, dtype=np.int64)  # (V, J)
    # are a community's items together in the tree? purity of the items under each layer-0 node
    # (an item under every node its J paths start with) against the same with items shuffled
    K, D = cfg.structure.K, cfg.structure.D
    top_node = assignment // K ** (D - 1)  # (V, J) layer-0 node of every path
    shuffled = top_node[np.random.default_rng(0).permutation(V)]
    res["layer0_purity"] = [_node_purity(t, planted.item_clusters) for t in (top_node, shuffled)]
    print("layer-0 community purity (model, items shuffled):", res["layer0_purity"], flush=True)
    res["dr"] = []
    for B in BEAMS:
        found, _, n_cand = r.search(Us, U, TOPK, B)
        off_beam, unreachable, n_reached = miss_breakdown(r, assignment, Us, truth, B)
        row = {"B": B, "recall_at_200": bs.recall(found, truth), "candidates_mean": float(n_cand.mean()),
               "not_on_beamed_path": off_beam, "on_unreachable_path": unreachable,
               "paths_reached_by_any_user": n_reached}
        res["dr"].append(row)
        print(row, flush=True)
    print(json.dumps({k: v for k, v in res.items() if k != "dr"}, default=float), flush=True)
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*rows, res], indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
