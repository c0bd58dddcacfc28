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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EncoderConfig


class UserEncoder(nn.Module):
    def __init__(self, n_items: int, cfg: EncoderConfig, sparse: bool = False):
        super().__init__()
        self.n_items, self.kind, self.e = n_items, cfg.kind, cfg.e
        # row n_items is the padding row: zero, never updated. ``sparse`` gradients: a step
        # touches only the rows in its batch, so its cost does not grow with V.
        self.item_emb = nn.Embedding(n_items + 1, cfg.item_dim, padding_idx=n_items, sparse=sparse)
        if cfg.kind == "gru":
            self.gru = nn.GRU(cfg.item_dim, cfg.e, batch_first=True)
        elif cfg.kind == "mean":
            self.proj = nn.Linear(cfg.item_dim, cfg.e)
        else:
            raise ValueError(f"unknown encoder kind {cfg.kind!r}")

    def forward(self, hist: Tensor, lengths: Tensor) -> Tensor:
        """hist (batch, L) long padded with -1, lengths (batch,) long -> (batch, e)."""
        valid = hist >= 0  # (batch, L)
        idx = torch.where(valid, hist, self.n_items)  # (batch, L), padding row n_items
        if self.kind == "mean":  # one fused lookup-and-sum: no (batch, L, item_dim) tensor
            emb = self.item_emb
            total = F.embedding_bag(idx, emb.weight, mode="sum", sparse=emb.sparse,
                                    padding_idx=self.n_items)  # (batch, item_dim)
            mean = total / lengths.clamp(min=1).unsqueeze(1).to(total.dtype)  # (batch, item_dim)
            return self.proj(mean)  # (batch, e)
        x = self.item_emb(idx)  # (batch, L, item_dim)
        out, _ = self.gru(x)  # (batch, L, e) hidden state after each position
        last = (lengths - 1).clamp(min=0)  # (batch,)
        h = out.gather(1, last.view(-1, 1, 1).expand(-1, 1, self.e)).squeeze(1)  # (batch, e)
        return torch.where((lengths > 0).unsqueeze(1), h, torch.zeros_like(h))  # (batch, e)
