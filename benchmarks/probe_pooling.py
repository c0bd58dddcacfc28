"""Is a single user vector what holds the learned reranker below Item-CF? A plain-torch probe.

    python benchmarks/probe_pooling.py DATA [--pool mean|lse|max] [--e 64] [--tau 0.1]
        [--epochs 40] [--patience 6] [--lr 3e-3] [--batch 128] [--itemcf]

Two item tables, P (inputs) and Q (outputs), unit vectors. A user with history h_1..h_n
(the most recent ``--L``) scores item v as

- ``mean``: cos(mean_i P[h_i], Q[v]) / tau (one user vector: the project's reranker shape);
- ``lse``:  log sum_i exp(cos(P[h_i], Q[v]) / tau) (a mixture over the history items, each
  with its own softmax: multi-interest, Item-CF-like);
- ``max``:  max_i cos(P[h_i], Q[v]) / tau.

Training rows are cut at a random point per epoch (input = the items before the cut, targets
= the items from it on: what the user-split evaluation asks), full softmax over all items,
the mean over a row's targets of -log p, Adam. After every epoch recall@``--k`` of the
VALIDATION users (history items excluded) is printed; test users are never read. The best
epoch's recall and the settings go out as one JSON line. ``--itemcf`` prints Item-CF's
validation recall (with and without history items) instead.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from deep_retrieval.baselines import ItemCF
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.metrics import compute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--pool", default="lse", choices=["mean", "lse", "max"])
    ap.add_argument("--e", type=int, default=64)
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--L", type=int, default=50, help="history items kept (the most recent)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--itemcf", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    ds = Dataset.load(a.data)
    V, val = ds.n_items, ds.val
    if a.itemcf:
        m = ItemCF().fit(ds)
        for excl in (False, True):
            ids, _ = m.recommend(val.hist, a.k, exclude_history=excl)
            print(json.dumps({"method": "item-cf", "exclude_history": excl,
                              f"val_recall@{a.k}": compute(ids, val.truth, [a.k])[a.k]["recall"]}))
        return

    P = torch.nn.Embedding(V + 1, a.e, padding_idx=V)  # row V pads
    Q = torch.nn.Embedding(V, a.e)
    torch.nn.init.normal_(P.weight, std=0.1)
    torch.nn.init.normal_(Q.weight, std=0.1)
    opt = torch.optim.Adam([P.weight, Q.weight], lr=a.lr)
    rows = [ds.train[i] for i in range(len(ds.train)) if len(ds.train[i]) >= 2]

    def pad(hists: list[np.ndarray]) -> torch.Tensor:  # (b, L), V = padding
        out = np.full((len(hists), a.L), V, dtype=np.int64)
        for i, h in enumerate(hists):
            h = h[-a.L :]
            out[i, : len(h)] = h
        return torch.from_numpy(out)

    def scores(H: torch.Tensor) -> torch.Tensor:  # (b, L) -> (b, V)
        mask = H != V  # (b, L)
        ph = P(H)  # (b, L, e)
        q = F.normalize(Q.weight, dim=-1)  # (V, e)
        if a.pool == "mean":
            u = (ph * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (b, e)
            return F.normalize(u, dim=-1) @ q.T / a.tau
        s = torch.einsum("ble,ve->blv", F.normalize(ph, dim=-1), q) / a.tau  # (b, L, V)
        s = s.masked_fill(~mask[..., None], float("-inf"))
        return s.max(1).values if a.pool == "max" else torch.logsumexp(s, 1)

    @torch.no_grad()
    def val_recall() -> float:
        recs = []
        for lo in range(0, len(val), 256):
            hs = [val.hist[i] for i in range(lo, min(lo + 256, len(val)))]
            s = scores(pad(hs))  # (b, V)
            for j, h in enumerate(hs):
                s[j, h] = float("-inf")  # history items excluded
            recs.append(s.topk(a.k, dim=1).indices.numpy())
        return compute(np.concatenate(recs), val.truth, [a.k])[a.k]["recall"]

    best, t0 = (0, -1.0), time.perf_counter()
    for ep in range(1, a.epochs + 1):
        order, total = rng.permutation(len(rows)), 0.0
        for lo in range(0, len(order), a.batch):
            batch = [rows[i] for i in order[lo : lo + a.batch]]
            cuts = [int(rng.integers(1, len(r))) for r in batch]
            H = pad([r[:c] for r, c in zip(batch, cuts, strict=True)])
            targets = [r[c:] for r, c in zip(batch, cuts, strict=True)]
            Y = torch.full((len(batch), max(len(t) for t in targets)), -1, dtype=torch.long)  # (b, T)
            for i, t in enumerate(targets):
                Y[i, : len(t)] = torch.from_numpy(t)
            logp = torch.log_softmax(scores(H), 1)  # (b, V)
            m = Y >= 0
            loss = (-(logp.gather(1, Y.clamp(min=0)) * m).sum(1) / m.sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        r = val_recall()
        best = max(best, (ep, r), key=lambda x: x[1])
        print(f"epoch {ep} loss {total / len(rows):.4f} val recall@{a.k} {r:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if ep - best[0] >= a.patience:
            break
    print(json.dumps({"data": a.data, "settings": vars(a), "best_epoch": best[0],
                      f"val_recall@{a.k}_excl_history": round(best[1], 4),
                      "train_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
