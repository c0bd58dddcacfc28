"""The softmax reranker (SPEC 4): p(y | x) proportional to exp(u . w_y), trained by sampled softmax.

Items have output embeddings W (V, e) and no bias, so ranking by ``full_scores`` (or by
an exact inner-product search over ``item_embeddings()``) is the reranker exactly.

Sampled softmax: one set of m negatives per batch, drawn with replacement from
Q (unigram counts^power, or uniform) by a seeded generator. Every logit is corrected
by log Q: ``u . w_v - log Q(v)`` for the target and each negative, Q(v) the
*probability* of drawing v. (Using the expected count m Q(v) instead subtracts the same
log m from every logit, which the softmax ignores.) A negative equal to the row's target
(an accidental hit) gets logit -inf. The loss is the cross-entropy with the target at
index 0 of the (batch, 1 + m) logits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RerankerConfig


class Reranker(nn.Module):
    """Item output embeddings (V, e) scored by inner product with the user embedding.

    ``item_counts`` (V,) are the unigram counts for ``cfg.sampling == "unigram"`` (items
    counted 0 are treated as 1, so every item can be drawn and log Q stays finite);
    without counts, or with ``"uniform"``, Q is uniform. ``seed`` seeds the negatives.
    ``sparse``: sparse gradients for the item embeddings (large catalogues).
    """

    def __init__(
        self,
        n_items: int,
        e: int,
        cfg: RerankerConfig,
        item_counts: np.ndarray | None = None,
        seed: int = 0,
        sparse: bool = False,
    ):
        super().__init__()
        self.n_items, self.negatives, self.seed = n_items, cfg.negatives, seed
        self.cfg = cfg
        self.item_emb = nn.Embedding(n_items, e, sparse=sparse)  # sparse: as the encoder's
        nn.init.normal_(self.item_emb.weight, std=e**-0.5)  # logits of order 1 at init
        self.set_sampling(item_counts)
        self._gen: torch.Generator | None = None

    def set_sampling(self, item_counts: np.ndarray | None) -> None:
        """(Re)build the proposal Q (V,) of the negatives and its log, on the CPU."""
        if self.cfg.sampling == "unigram" and item_counts is not None:
            counts = np.asarray(item_counts, dtype=np.float64)
            if counts.shape != (self.n_items,):
                raise ValueError(f"item_counts has shape {counts.shape}, expected ({self.n_items},)")
            weights = np.maximum(counts, 1.0) ** self.cfg.unigram_power  # (V,)
        else:
            weights = np.ones(self.n_items)  # (V,)
        q = torch.tensor(weights / weights.sum(), dtype=torch.float32, device="cpu")  # (V,)
        self.register_buffer("q", q, persistent=False)
        self.register_buffer("log_q", q.log(), persistent=False)

    # ------------------------------------------------------------ scoring
    def score(self, u: Tensor, items: Tensor) -> Tensor:
        """u (n, e), items (n, m) long with -1 padding -> (n, m) inner products, -inf at pads."""
        w = self.item_emb(items.clamp(min=0))  # (n, m, e)
        s = torch.bmm(w, u.unsqueeze(2)).squeeze(2)  # (n, m)
        return s.masked_fill(items < 0, float("-inf"))  # (n, m)

    def full_scores(self, u: Tensor) -> Tensor:
        """u (n, e) -> (n, V) inner products with every item."""
        return u @ self.item_emb.weight.T  # (n, V)

    def item_embeddings(self) -> np.ndarray:
        """(V, e) float32 copy of the item embeddings, for brute force or HNSW."""
        return self.item_emb.weight.detach().cpu().numpy().astype(np.float32, copy=True)

    # ------------------------------------------------------------ training
    def sample_negatives(self, m: int | None = None) -> Tensor:
        """(m,) items drawn from Q with replacement by the seeded generator (m: cfg.negatives)."""
        if self._gen is None or self._gen.device != self.q.device:
            self._gen = torch.Generator(device=self.q.device).manual_seed(self.seed)
        m = self.negatives if m is None else m
        return torch.multinomial(self.q, m, replacement=True, generator=self._gen)  # (m,)

    def sampled_softmax_loss(
        self, u: Tensor, targets: Tensor, negatives: Tensor | None = None
    ) -> Tensor:
        """Mean sampled-softmax cross-entropy: u (batch, e), targets (batch,) -> scalar.

        negatives (m,) are shared by the batch; drawn by ``sample_negatives`` if None.
        """
        if negatives is None:
            negatives = self.sample_negatives()  # (m,)
        w_pos = self.item_emb(targets)  # (batch, e)
        w_neg = self.item_emb(negatives)  # (m, e)
        pos = (u * w_pos).sum(1) - self.log_q[targets]  # (batch,)
        neg = u @ w_neg.T - self.log_q[negatives]  # (batch, m)
        hit = negatives.unsqueeze(0) == targets.unsqueeze(1)  # (batch, m) accidental hits
        neg = neg.masked_fill(hit, float("-inf"))  # (batch, m)
        logits = torch.cat([pos.unsqueeze(1), neg], dim=1)  # (batch, 1 + m)
        zeros = torch.zeros_like(targets)  # (batch,) the target is class 0
        return F.cross_entropy(logits, zeros)  # ()
