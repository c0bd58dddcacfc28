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
- the paths: non-empty, largest, mean size;
- how good the reranker is: the share of its exact top-200 in the user's planted communities
  and the overlap with the planted top-200 (``planted_top``), and recall@200 against the
  users' held-out items of DR (per B), of the reranker by brute force, of Item-CF and of the
  planted top-200 (the best any model can do).

``--users N`` draws N users (50 interactions each) instead of the preset's ``V // 5``: more
interactions per item. ``--latent`` generates latent-factor data instead
(``deep_retrieval.data.latent``, rank 16, beta 3, the same users and interactions): there the
reranker can be good (docs/choices.md, ``dr demo``), and its quality is measured against the
true factors: the overlap of its exact top-200 with the users' true top-200
(``LatentTruth.top``) and the true top-200's held-out recall; the community shares and purity
are then left out. ``--kmeans-after N`` (not in the paper; measured and not kept, see
docs/choices.md) replaces the paths after N joint epochs by a k-means tree of the reranker's
item embeddings (leaves of ~20 items, each item on its J nearest leaves) and empties the
score table; training then goes on as usual.

One thread. Prints a line per B and writes one JSON object (appended to ``--out``'s list).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import bench_scale as bs  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep_retrieval.baselines import ItemCF  # noqa: E402
from deep_retrieval.config import load_config  # noqa: E402
from deep_retrieval.data.dataset import Ragged  # noqa: E402
from deep_retrieval.data.latent import LatentConfig, generate_latent  # noqa: E402
from deep_retrieval.data.synth import SynthConfig, cluster_purity, generate, planted_top  # noqa: E402
from deep_retrieval.fast import Retriever  # noqa: E402
from deep_retrieval.metrics import compute  # noqa: E402
from deep_retrieval.model import DeepRetrieval  # noqa: E402
from deep_retrieval.mstep import ScoreTable  # noqa: E402
from deep_retrieval.state import TrainState  # noqa: E402
from deep_retrieval.structure import to_flat  # noqa: E402
from deep_retrieval.train import train  # noqa: E402

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


def _sq_dists(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(n, k) squared Euclidean distances between the rows of X (n, e) and C (k, e)."""
    return (X**2).sum(1)[:, None] - 2 * X @ C.T + (C**2).sum(1)[None]


def _kmeans(X: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20):
    """Lloyd's k-means from k random rows: (labels (n,), centres (k, e)); k >= n: one row each."""
    if k >= len(X):
        return np.arange(len(X)), X.copy()
    C = X[rng.choice(len(X), k, replace=False)].copy()  # (k, e)
    for _ in range(iters):
        a = _sq_dists(X, C).argmin(1)  # (n,)
        sums = np.zeros_like(C)
        np.add.at(sums, a, X)
        n = np.bincount(a, minlength=k)
        C[n > 0] = sums[n > 0] / n[n > 0, None]
    return a, C


def kmeans_paths(X: np.ndarray, K: int, D: int, J: int, leaf: int, rng: np.random.Generator) -> np.ndarray:
    """(V, J) flat path ids: a K-ary k-means tree of the rows of X, split at every layer into
    min(K, ceil(n / leaf)) children; each item on its J nearest leaves (by leaf centre)."""
    groups = [(np.arange(len(X)), 0)]  # (items, flat prefix)
    for _ in range(D):
        nxt = []
        for idx, prefix in groups:
            a, _ = _kmeans(X[idx], min(K, -(-len(idx) // leaf)), rng)
            nxt += [(idx[a == c], prefix * K + c) for c in np.unique(a)]
        groups = nxt
    centres = np.stack([X[idx].mean(0) for idx, _ in groups])  # (leaves, e)
    ids = np.array([p for _, p in groups], dtype=np.int64)
    return ids[np.argsort(_sq_dists(X, centres), axis=1)[:, :J]]  # (V, J) nearest leaves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=float, default=1e4)
    ap.add_argument("--config", default="paper-amazon")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--epochs", type=int, default=20, help="most joint epochs")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=0, help="users (50 interactions each); 0 = the preset's")
    ap.add_argument("--kmeans-after", type=int, default=0, help="k-means paths after N joint epochs")
    ap.add_argument("--latent", action="store_true", help="latent-factor data instead of communities")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(OUT / "personal_probe.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    V = int(a.V)
    t0 = time.perf_counter()
    sc = SynthConfig.personal(n_items=V, seed=a.seed)
    if a.users:
        sc = dataclasses.replace(sc, n_users=a.users, n_interactions=50 * a.users)
    if a.latent:
        n_eval = min(1_000, sc.n_users // 10)
        lc = LatentConfig(n_items=V, n_users=sc.n_users, n_interactions=sc.n_interactions,
                          val_users=n_eval, test_users=n_eval, seed=a.seed)
        (ds, latent), planted = generate_latent(lc), None
    else:
        ds, planted = generate(sc)
    t_data = time.perf_counter() - t0
    cfg = load_config(a.config, [f"train.epochs_joint={a.epochs}", f"train.patience={a.patience}",
                                 "train.val_k=200", "train.threads=1", "train.progress=false",
                                 f"train.seed={a.seed}", *a.overrides])
    t0 = time.perf_counter()
    log = lambda s: print(" ", s, flush=True)  # noqa: E731
    if a.kmeans_after:
        epochs = cfg.train.epochs_joint, cfg.train.epochs_dr
        cfg.train.epochs_joint, cfg.train.epochs_dr = a.kmeans_after, 0
        state = train(TrainState.new(cfg, ds), ds, log=log)
        S = cfg.structure
        state.assignment = kmeans_paths(state.net.reranker.item_embeddings(), S.K, S.D, S.J, 20,
                                        np.random.default_rng(a.seed))
        state.scores = ScoreTable.empty(V, cfg.em.S)
        print("  k-means paths:", len(np.unique(state.assignment)), "non-empty", flush=True)
        cfg.train.epochs_joint, cfg.train.epochs_dr = epochs
        m = DeepRetrieval(cfg)
        m._adopt(train(state, ds, log=log), ds.item_ids)
    else:
        m = DeepRetrieval(cfg).fit(ds, log=log)
    res: dict = {"label": a.label, "V": V, "users": sc.n_users, "data": "latent" if a.latent else "personal",
                 "kmeans_after": a.kmeans_after,
                 "overrides": a.overrides, "data_s": t_data,
                 "train_s": time.perf_counter() - t0, "epochs": len(m.log),
                 "val_recall_200": [e.get("val_recall@200") for e in m.log], "paths": m.log[-1]["paths"]}
    rows = np.arange(min(512, len(ds.test.hist)))
    hist, held_out, users = ds.test.hist.take(rows), ds.test.truth.take(rows), ds.test.users[rows]
    U, Us = m.user_embeddings(hist, "rr"), m.user_embeddings(hist, "str")  # (n, e) each
    E = m.net.reranker.item_embeddings()  # (V, e) as the reranker scores them
    truth = bs.exact_numpy(E, U, TOPK)  # (n, TOPK) best first

    def r200(ids: np.ndarray) -> float:  # recall@200 against the users' held-out items
        return compute(ids, held_out, [TOPK])[TOPK]["recall"]

    # how good is the reranker? its exact top-200 against the planted story
    if a.latent:
        best = latent.top(users, TOPK)  # (n, TOPK) the true top-200
        in_comm = None
    else:
        ic = planted.item_clusters  # (V, W) -1 padded
        mine = planted.user_end[users].astype(np.int64)  # (n, slots) the users' communities
        in_comm = (ic[truth][:, :, :, None] == mine[:, None, None, :]).any(axis=(2, 3))  # (n, TOPK)
        best = planted_top(planted, sc.noise, TOPK, users)  # (n, TOPK)
    res["reranker"] = {
        "share_in_user_communities": None if in_comm is None else float(in_comm.mean()),
        "overlap_with_planted_top200": float(np.mean([len(np.intersect1d(t, b[b >= 0])) / TOPK
                                                      for t, b in zip(truth, best, strict=True)])),
        "recall_200_held_out": {"brute_force": r200(truth), "planted_top200": r200(best),
                                "item_cf": r200(ItemCF().fit(ds).recommend(hist, TOPK)[0])}}
    print("reranker:", res["reranker"], flush=True)
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
    res["layer0_purity"] = None if a.latent else [_node_purity(t, planted.item_clusters)
                                                   for t in (top_node, shuffled)]
    print("layer-0 community purity (model, items shuffled):", res["layer0_purity"], flush=True)
    res["dr"] = []
    for B in BEAMS:
        found, _, n_cand = r.search(Us, U, TOPK, B)
        off_beam, unreachable, n_reached = miss_breakdown(r, assignment, Us, truth, B)
        row = {"B": B, "recall_at_200": bs.recall(found, truth), "candidates_mean": float(n_cand.mean()),
               "recall_200_held_out": r200(found),
               "not_on_beamed_path": off_beam, "on_unreachable_path": unreachable,
               "paths_reached_by_any_user": n_reached}
        if B == BEAMS[-1]:  # who are the misses? training counts of missed vs all exact top-200 items
            counts = ds.item_counts()  # (V,)
            missed = np.concatenate([np.setdiff1d(t, f) for t, f in zip(truth, found, strict=True)])
            row["train_count_median_missed_vs_all"] = [
                float(np.median(counts[missed])) if len(missed) else None, float(np.median(counts[truth]))]
        res["dr"].append(row)
        print(row, flush=True)
    print(json.dumps({k: v for k, v in res.items() if k != "dr"}, default=float), flush=True)
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*rows, res], indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
