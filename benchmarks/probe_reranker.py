"""Train the reranker alone (encoder + softmax) on user-level examples; report VALIDATION metrics.

    python benchmarks/probe_reranker.py DATA --config amazon-book --set reranker.loss="full" \
        --set reranker.similarity="cosine" --set reranker.temperature=0.1 --set encoder.dropout=0.5 \
        --epochs 40 --patience 5 --ks 20 --exclude-history

One example per training row (a user): input = the row's most recent ``encoder.max_seq_len``
items (the encoder drops ``encoder.dropout`` of them at training time), targets = every item
of the row (``--targets all``, the denoising recipe), or ``--targets dropped``: the probe
itself drops each item with probability ``--drop`` (the encoder's own dropout is then off);
the kept items are the input, the dropped ones the targets (the input never holds a target);
``--targets suffix``: a random cut per row and epoch, the items before it the input and the
items from it on the targets (what a user-split evaluation asks: history -> what follows).
The loss is the project's ``Reranker.loss`` with (batch, T) targets (``reranker.loss``,
``similarity``, ``temperature``, ``negatives``, ``sampling``). Adam over every parameter
with ``train.lr`` and ``train.weight_decay`` (L2 on all of them, item embeddings included).

After every epoch the validation users are scored by brute force (their history through the
encoder in eval mode, ``Reranker.full_scores``; ``--exclude-history`` removes history items)
and the best epoch by recall@ks[0] is kept; training stops after ``--patience`` epochs without
improvement. Test users are never read. Prints one line per epoch and a final JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from deep_retrieval.baselines import ItemCF
from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset, pad_ragged
from deep_retrieval.encoder import UserEncoder
from deep_retrieval.evaluate import evaluate
from deep_retrieval.metrics import compute
from deep_retrieval.reranker import Reranker
from deep_retrieval.youtube_dnn import YouTubeDNN


def split_rows(hist: torch.Tensor, lengths: torch.Tensor, p: float, suffix: bool, max_len: int):
    """Inputs and targets of each row: (inputs (batch, <= max_len), lengths, targets (batch, T)).

    ``suffix``: a random cut in [1, n - 1] per row (rows of one item: no target); the items
    before it are the input (the last ``max_len``), the rest the targets. Else each item is a
    target with probability p and an input otherwise.
    """
    valid = hist >= 0  # (batch, L)
    col = torch.arange(hist.shape[1])  # (L,)
    if suffix:
        cut = 1 + (torch.rand(len(hist)) * (lengths - 1).clamp(min=0)).long()  # (batch,) in [1, n-1]
        drop = valid & (col >= cut.unsqueeze(1))  # (batch, L)
        keep = valid & ~drop & (col >= (cut - max_len).unsqueeze(1))
    else:
        drop = valid & (torch.rand(hist.shape) < p)  # (batch, L)
        keep = valid & ~drop

    def compact(mask):
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (batch, L)
        return torch.where(mask, hist, torch.full_like(hist, -1)).gather(1, order), mask.sum(1)

    x, n = compact(keep)
    y, _ = compact(drop)
    return x[:, :max_len], n, y


@torch.no_grad()
def evaluate_val(ds: Dataset, enc: UserEncoder, rr: Reranker, max_len: int, ks: list[int],
                 exclude: bool) -> dict[int, dict[str, float]]:
    enc.eval()
    s = ds.val
    hist, lengths = pad_ragged(s.hist, max_len)
    # exclusion reads the whole history, not only the window the encoder sees
    full_hist, _ = pad_ragged(s.hist, 1 << 30)
    recs = []
    for lo in range(0, len(s), 512):
        h = torch.from_numpy(hist[lo : lo + 512])
        scores = rr.full_scores(enc(h, torch.from_numpy(lengths[lo : lo + 512])))  # (b, V)
        if exclude:
            fh = torch.from_numpy(full_hist[lo : lo + 512])  # (b, H)
            r, c = torch.nonzero(fh >= 0, as_tuple=True)
            scores[r, fh[r, c]] = float("-inf")
        recs.append(scores.topk(max(ks), dim=1).indices.numpy())
    enc.train()
    return compute(np.concatenate(recs), s.truth, ks)


def anchors(data: str, cfg, ks: list[int], exclude: bool) -> None:
    """Validation recall / NDCG of Item-CF and of the YouTube-DNN twin trained as the config says."""
    ds = Dataset.load(data)
    cfg.train.progress = False
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()
    methods = {"item-cf": ItemCF().fit(ds), "youtube-dnn": YouTubeDNN(cfg).fit(ds)}
    res = evaluate(ds, methods, ks, split="val", exclude_history=exclude)
    for r in res["results"]:
        print(f"{r['method']} R@{r['k']} {r['recall']:.4f} N@{r['k']} {r['ndcg']:.4f}")
    print(f"{time.perf_counter() - t0:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--targets", choices=["all", "dropped", "suffix"], default="all")
    ap.add_argument("--drop", type=float, default=0.5, help="--targets dropped: share of items held out")
    ap.add_argument("--ks", default="20")
    ap.add_argument("--exclude-history", action="store_true")
    ap.add_argument("--max-minutes", type=float, default=20.0, help="stop after this much training")
    ap.add_argument("--anchors", action="store_true",
                    help="only print validation metrics of Item-CF and the YouTube-DNN twin (the config)")
    args = ap.parse_args()
    cfg = load_config(args.config, tuple(args.overrides))
    ks = [int(k) for k in args.ks.split(",")]
    if args.anchors:
        return anchors(args.data, cfg, ks, args.exclude_history)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ds = Dataset.load(args.data)
    V, L = ds.n_items, cfg.encoder.max_seq_len
    enc_cfg = copy.deepcopy(cfg.encoder)
    if args.targets != "all":
        enc_cfg.dropout = 0.0
    enc = UserEncoder(V, enc_cfg)
    counts = np.bincount(ds.train.values, minlength=V)
    rr = Reranker(V, cfg.encoder.e, cfg.reranker, counts, seed=cfg.train.seed)
    params = list(enc.parameters()) + list(rr.parameters())
    opt = torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    rows = np.flatnonzero(ds.train.lengths > 0)
    rng = np.random.default_rng(cfg.train.seed)
    best, best_epoch, best_metrics, wait, t_train = -1.0, 0, None, 0, 0.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        enc.train()
        total, steps = 0.0, 0
        perm = rng.permutation(rows)
        for lo in range(0, len(rows), cfg.train.batch_size):
            batch = perm[lo : lo + cfg.train.batch_size]
            full, n = pad_ragged(ds.train, 1 << 30, batch)  # (b, T) every item of the row
            full, n = torch.from_numpy(full), torch.from_numpy(n)
            if args.targets != "all":
                x, xn, y = split_rows(full, n, args.drop, args.targets == "suffix", L)
            else:
                y = full
                x, xn = pad_ragged(ds.train, L, batch)
                x, xn = torch.from_numpy(x), torch.from_numpy(xn)
            x = x[:, : max(int(xn.max()), 1)]
            loss = rr.loss(enc(x, xn), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        t_train += time.perf_counter() - t0
        m = evaluate_val(ds, enc, rr, L, ks, args.exclude_history)
        r = m[ks[0]]["recall"]
        line = " ".join(f"R@{k} {m[k]['recall']:.4f} N@{k} {m[k]['ndcg']:.4f}" for k in ks)
        print(f"epoch {epoch} loss {total / steps:.4f} {line} train {t_train:.0f}s", flush=True)
        if r > best:
            best, best_epoch, best_metrics, wait = r, epoch, m, 0
        else:
            wait += 1
            if wait >= args.patience:
                break
        if t_train > 60 * args.max_minutes:
            print("time limit reached", flush=True)
            break
    out = {"data": args.data, "overrides": args.overrides, "targets": args.targets,
           "best_epoch": best_epoch, "train_s": round(t_train, 1),
           "val": {k: {"recall": round(v["recall"], 4), "ndcg": round(v["ndcg"], 4)}
                   for k, v in best_metrics.items()}}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
