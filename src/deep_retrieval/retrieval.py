"""Retrieval with a DRNet and a path index: the torch path.

    history -> encoder -> beam search over the K x D structure (B paths)
            -> candidates = union of the items on those paths -> rerank -> top-k

The trainer's validation and a GPU model's ``DeepRetrieval.recommend`` call ``recommend`` here.
A CPU model serves through ``DeepRetrieval.retrieve`` (numpy ``fast.Retriever``, the server's
path), which returns the same lists, ties aside (tests/test_fast.py), so what training reports
is what the model serves. The net may sit on any device; the histories, the path index and the
results are on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .beam import beam_search
from .config import Config
from .data.dataset import Ragged, pad_ragged
from .net import DRNet, eval_mode
from .paths import PathIndex
from .recommender import pairs_in_history
from .structure import to_flat

RERANK_FLOATS = 1 << 25  # most floats one rerank block gathers (128 MB)
RERANK_ROWS = 32  # users per rerank block, taken in order of their candidate counts (cache-sized)
DENSE_RERANK = 8  # rerank a block of >= 16 users by one (users, V) matmul when its padded
DENSE_MIN_USERS = 16  # candidate rows hold >= V / 8 items (fewer users: gathering is cheaper)


def net_device(net: DRNet) -> torch.device:
    """Where a DRNet's weights are (all on one device): its reranker's item table's device.

    Not ``next(net.parameters())``: walking the modules costs ~30 us, a tenth of a batch-1 query.
    """
    return net.reranker.item_emb.weight.device


def padded(hist: Ragged, cfg: Config, rows: np.ndarray, device) -> tuple[Tensor, Tensor]:
    """(rows, L) histories padded -1 and (rows,) lengths, as tensors on ``device``."""
    h, lengths = pad_ragged(hist, cfg.encoder.max_seq_len, rows)
    return torch.from_numpy(h).to(device), torch.from_numpy(lengths).to(device)


@torch.no_grad()
def candidates(
    net: DRNet, index: PathIndex, cfg: Config, hist: Ragged, B: int, batch_size: int = 4096,
    tables: list[Tensor] | None = None,
) -> Ragged:
    """The items on each user's B best paths (the union, ascending): one Ragged row per history."""
    eval_mode(net)
    dev = net_device(net)
    if tables is None:
        tables = net.structure.prefix_tables()
    parts, lengths = [], []
    for lo in range(0, len(hist), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(hist)))
        h, lens = padded(hist, cfg, rows, dev)
        paths, _ = beam_search(net.structure, net.enc_str(h, lens), B, tables)  # (b, B', D)
        c = index.candidates(to_flat(paths, cfg.structure.K).cpu().numpy())
        parts.append(c.values)
        lengths.append(c.lengths)
    if not parts:
        return Ragged.from_lists([])
    return Ragged.from_lengths(np.concatenate(parts), np.concatenate(lengths))


@torch.no_grad()
def recommend(
    net: DRNet, index: PathIndex, cfg: Config, hist: Ragged, k: int, B: int,
    exclude_history: bool = False, batch_size: int = 1024, tables: list[Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k of every history: ``ids`` (n, k) int64 (-1 pads), ``scores`` (n, k) float32
    (-inf pads) and ``scored`` (n,) the candidates each user's reranker scored.

    ``tables``: ``net.structure.prefix_tables()`` of the current weights (computed if None).
    """
    eval_mode(net)
    dev = net_device(net)
    K = cfg.structure.K
    n = len(hist)
    ids = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    scored = np.zeros(n, dtype=np.int64)
    if tables is None:
        tables = net.structure.prefix_tables()
    for lo in range(0, n, batch_size):
        rows = np.arange(lo, min(lo + batch_size, n))
        h, lens = padded(hist, cfg, rows, dev)
        u_str, u_rr = net.encode(h, lens)  # (b, e) each
        paths, _ = beam_search(net.structure, u_str, B, tables)  # (b, B', D)
        cands = index.candidates(to_flat(paths, K).cpu().numpy())  # b rows of item ids
        if exclude_history:
            keep = ~pairs_in_history(cands.row_ids(), cands.values, hist.take(rows))
            cands = Ragged.from_lengths(
                cands.values[keep], np.bincount(cands.row_ids()[keep], minlength=len(rows))
            )
        scored[rows] = cands.lengths
        _rerank(net, u_rr, cands, k, rows, ids, scores)
    return ids, scores, scored


def _rerank(net: DRNet, u_rr: Tensor, cands: Ragged, k: int, rows: np.ndarray, ids: np.ndarray,
            scores: np.ndarray) -> None:
    """Write each user's top-k candidates by the reranker into ``ids[rows]`` / ``scores[rows]``.

    Users are taken in blocks of similar candidate counts (sorted), each block padded to its own
    longest row, so one long row does not pad the whole batch. A block scores its candidates by
    gathering their embeddings, or, when it has >= ``DENSE_MIN_USERS`` users and its rows hold
    >= V / ``DENSE_RERANK`` items, by one (users, V) matmul and a gather of the scores.
    """
    dev, e, V = u_rr.device, u_rr.shape[1], net.reranker.n_items
    lengths = cands.lengths
    order = np.argsort(lengths, kind="stable")  # (b,) users by candidate count
    items = None  # (V, e) the item embeddings as scored, made when a block needs them
    i = 0
    while i < len(order):
        width = max(1, int(lengths[order[min(len(order), i + RERANK_ROWS) - 1]]))  # sorted: the longest
        step = max(1, min(RERANK_ROWS, RERANK_FLOATS // (width * e)))  # (rows, m, e) gather under ~128 MB
        blk = order[i : i + step]
        i += step
        width = max(1, int(lengths[blk[-1]]))  # sorted: the block's longest row
        pad, _ = pad_ragged(cands, width, blk)
        cand = torch.from_numpy(pad).to(dev)  # (blk, m) candidates, padded -1
        u = u_rr[torch.from_numpy(blk).to(dev)]  # (blk, e)
        if width * DENSE_RERANK >= V and len(blk) >= DENSE_MIN_USERS:  # a matmul beats the gather
            if items is None:
                items = net.reranker.item_weight()  # (V, e) as scored, once per call
            s = (net.reranker.user(u) @ items.T).gather(1, cand.clamp(min=0))  # (blk, m)
            s = s.masked_fill(cand < 0, float("-inf"))
        else:
            s = net.reranker.score(u, cand)  # (blk, m), -inf at pads
        kk = min(k, width)
        top_s, top_j = torch.topk(s, kk, dim=1)  # (blk, kk)
        top_ids = cand.gather(1, top_j)  # (blk, kk)
        finite = torch.isfinite(top_s)
        out = rows[blk]
        ids[out, :kk] = torch.where(finite, top_ids, -1).cpu().numpy()
        scores[out, :kk] = torch.where(finite, top_s, float("-inf")).float().cpu().numpy()
