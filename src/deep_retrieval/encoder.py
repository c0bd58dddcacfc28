"""User encoder: the behaviour sequence -> one user embedding of width e (SPEC 5).

Histories arrive as ``pad_histories`` makes them: (batch, L) int64, time-ordered from
column 0, padded with -1 on the right, plus (batch,) lengths (a length may be 0).
Truncation to the most recent ``max_seq_len`` items happens there, not here.

- ``kind = "gru"``: item embeddings -> GRU (hidden size e) -> the hidden state after the
  last valid item (gathered at position length-1; the GRU reads left to right, so the
  padding after that position cannot change it). An empty history gives the GRU's
  initial state, zeros.
- ``kind = "mean"``: masked mean of the item embeddings -> Linear(item_dim, e). An
  empty history has mean zero, so it gives the Linear's bias.
- ``kind = "sasrec"``: item embeddings + learned position embeddings -> ``blocks``
  pre-norm causal self-attention blocks (``heads`` heads, feed-forward width item_dim, no
  internal dropout) -> LayerNorm -> the output at the last valid position ->
  Linear(item_dim, e). Position p of an item is its distance to the most recent item
  (0 = the last one), so the newest item always has the same position embedding. Causal:
  a position sees only itself and earlier items, so right padding never changes a valid
  position. An empty history gives zeros, as the GRU.

``dropout`` (training only, ``self.training``): every history item is dropped with this
probability, whole (the remaining items close up in order, lengths shrink), before any
of the above; a user may lose every item. In eval mode nothing is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EncoderConfig


def drop_items(hist: Tensor, lengths: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Drop each valid item with probability p (torch's global generator); kept items keep their order.

    hist (batch, L) padded with -1, lengths (batch,) -> (batch, L) padded with -1, (batch,).
    """
    keep = (hist >= 0) & (torch.rand(hist.shape, device=hist.device) >= p)  # (batch, L)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept columns first
    out = torch.where(keep, hist, torch.full_like(hist, -1)).gather(1, order)  # (batch, L)
    return out, keep.sum(1).to(lengths.dtype)


class UserEncoder(nn.Module):
    def __init__(self, n_items: int, cfg: EncoderConfig, sparse: bool = False):
        super().__init__()
        self.n_items, self.kind, self.e, self.dropout = n_items, cfg.kind, cfg.e, cfg.dropout
        # row n_items is the padding row: zero, never updated. ``sparse`` gradients: a step
        # touches only the rows in its batch, so its cost does not grow with V.
        self.item_emb = nn.Embedding(n_items + 1, cfg.item_dim, padding_idx=n_items, sparse=sparse)
        if cfg.kind == "gru":
            self.gru = nn.GRU(cfg.item_dim, cfg.e, batch_first=True)
        elif cfg.kind == "mean":
            self.proj = nn.Linear(cfg.item_dim, cfg.e)
        elif cfg.kind == "sasrec":
            self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.item_dim)
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(cfg.item_dim, cfg.heads, dim_feedforward=cfg.item_dim,
                                           dropout=0.0, batch_first=True, norm_first=True)
                for _ in range(cfg.blocks)
            )
            self.norm = nn.LayerNorm(cfg.item_dim)
            self.proj = nn.Linear(cfg.item_dim, cfg.e)
        else:
            raise ValueError(f"unknown encoder kind {cfg.kind!r}")

    def forward(self, hist: Tensor, lengths: Tensor) -> Tensor:
        """hist (batch, L) long padded with -1, lengths (batch,) long -> (batch, e)."""
        if self.training and self.dropout > 0:
            hist, lengths = drop_items(hist, lengths, self.dropout)
        valid = hist >= 0  # (batch, L)
        idx = torch.where(valid, hist, self.n_items)  # (batch, L), padding row n_items
        if self.kind == "mean":  # one fused lookup-and-sum: no (batch, L, item_dim) tensor
            emb = self.item_emb
            total = F.embedding_bag(idx, emb.weight, mode="sum", sparse=emb.sparse,
                                    padding_idx=self.n_items)  # (batch, item_dim)
            mean = total / lengths.clamp(min=1).unsqueeze(1).to(total.dtype)  # (batch, item_dim)
            return self.proj(mean)  # (batch, e)
        x = self.item_emb(idx)  # (batch, L, item_dim)
        last = (lengths - 1).clamp(min=0)  # (batch,)
        if self.kind == "sasrec":
            out = self._attend(x, lengths)  # (batch, L, item_dim)
            h = out.gather(1, last.view(-1, 1, 1).expand(-1, 1, out.shape[2])).squeeze(1)
            h = self.proj(h)  # (batch, e)
        else:
            out, _ = self.gru(x)  # (batch, L, e) hidden state after each position
            h = out.gather(1, last.view(-1, 1, 1).expand(-1, 1, self.e)).squeeze(1)  # (batch, e)
        return torch.where((lengths > 0).unsqueeze(1), h, torch.zeros_like(h))  # (batch, e)

    def _attend(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Causal self-attention blocks: x (batch, L, item_dim) -> (batch, L, item_dim)."""
        L = x.shape[1]
        col = torch.arange(L, device=x.device)  # (L,)
        # distance to the most recent item; padding columns get 0 (they are never read)
        pos = (lengths.unsqueeze(1) - 1 - col).clamp(min=0, max=self.pos_emb.num_embeddings - 1)
        x = x + self.pos_emb(pos)  # (batch, L, item_dim)
        causal = torch.triu(torch.full((L, L), float("-inf"), device=x.device), diagonal=1)  # (L, L)
        for block in self.blocks:
            x = block(x, src_mask=causal)  # (batch, L, item_dim)
        return self.norm(x)  # (batch, L, item_dim)
