"""The softmax reranker (SPEC 4): p(y | x) proportional to exp(s(u, w_y) / temperature).

Items have output embeddings W (V, e) and no bias. ``similarity = "dot"``: s = u . w.
``"cosine"``: s = u . w / (|u| |w|); ``user`` and ``item_embeddings()`` return unit
vectors, so in both cases ranking by ``full_scores`` (or by an exact inner-product search
of ``user(u)`` over ``item_embeddings()``) is the reranker exactly. The temperature only
scales the training logits; it never changes a ranking.

Losses (``loss``): ``"sampled"`` (below) or ``"full"``, the cross-entropy over all V
items. Both take one target per row, ``targets (batch,)``, or several, ``(batch, T)``
padded with -1: the loss is then the mean over rows (with at least one target) of the
mean over the row's targets of -log softmax, the other targets staying in the
denominator ("one example per user, all of the user's items as targets"). With T = 1
the multi-target loss equals the single-target one.

Sampled softmax: one set of m negatives per batch, drawn with replacement from
Q (unigram counts^power, or uniform) by a seeded generator. Every logit is corrected
by log Q: ``s(u, w_v) / temperature - log Q(v)`` for the target and each negative, Q(v) the
*probability* of drawing v. (Using the expected count m Q(v) instead subtracts the same
log m from every logit, which the softmax ignores.) A negative equal to the row's target
(an accidental hit) gets logit -inf. The loss is the cross-entropy with the target at
index 0 of the (batch, 1 + m) logits; with several targets per row, each target is
class 0 of its own (1 + m) logits over the row's shared negatives.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import RerankerConfig
from .errors import DRError


class Reranker(nn.Module):
    """Item output embeddings (V, e) scored by inner product (or cosine) with the user embedding.

    ``item_counts`` (V,) are the unigram counts for ``cfg.sampling == "unigram"`` (items
    counted 0 are treated as 1, so every item can be drawn and log Q stays finite);
    without counts, or with ``"uniform"``, Q is uniform. ``seed`` seeds the negatives.
    ``sparse``: sparse gradients for the item embeddings (large catalogues; not with the
    full softmax, whose gradient touches every row).
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
        if sparse and cfg.loss == "full":
            raise DRError(
                "reranker.loss = 'full' needs dense item embeddings: set train.sparse_embeddings = 'no'"
            )
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
    def user(self, u: Tensor) -> Tensor:
        """The user embedding as scored: u (n, e) -> (n, e), L2-normalised for cosine (idempotent)."""
        return F.normalize(u, dim=-1) if self.cfg.similarity == "cosine" else u

    def item_weight(self) -> Tensor:
        """The item embeddings as scored: (V, e), L2-normalised rows for cosine (differentiable)."""
        w = self.item_emb.weight  # (V, e)
        return F.normalize(w, dim=-1) if self.cfg.similarity == "cosine" else w

    def _items(self, items: Tensor) -> Tensor:
        """Embeddings of ``items`` (...) long >= 0 as scored: (..., e)."""
        w = self.item_emb(items)  # (..., e)
        return F.normalize(w, dim=-1) if self.cfg.similarity == "cosine" else w

    def score(self, u: Tensor, items: Tensor) -> Tensor:
        """u (n, e), items (n, m) long with -1 padding -> (n, m) similarities, -inf at pads."""
        w = self._items(items.clamp(min=0))  # (n, m, e)
        s = torch.bmm(w, self.user(u).unsqueeze(2)).squeeze(2)  # (n, m)
        return s.masked_fill(items < 0, float("-inf"))  # (n, m)

    def full_scores(self, u: Tensor) -> Tensor:
        """u (n, e) -> (n, V) similarities with every item."""
        return self.user(u) @ self.item_weight().T  # (n, V)

    def item_embeddings(self) -> np.ndarray:
        """(V, e) float32 copy of the item embeddings as scored (unit rows for cosine), for
        brute force or HNSW: an inner product with ``user(u)`` is the reranker's score."""
        return self.item_weight().detach().cpu().numpy().astype(np.float32, copy=True)

    # ------------------------------------------------------------ training
    def sample_negatives(self, m: int | None = None) -> Tensor:
        """(m,) items drawn from Q with replacement by the seeded generator (m: cfg.negatives)."""
        if self._gen is None or self._gen.device != self.q.device:
            self._gen = torch.Generator(device=self.q.device).manual_seed(self.seed)
        m = self.negatives if m is None else m
        return torch.multinomial(self.q, m, replacement=True, generator=self._gen)  # (m,)

    def loss(self, u: Tensor, targets: Tensor) -> Tensor:
        """The configured loss (``cfg.loss``): u (batch, e), targets (batch,) or (batch, T) -> scalar."""
        if self.cfg.loss == "full":
            return self.full_softmax_loss(u, targets)
        return self.sampled_softmax_loss(u, targets)

    def full_softmax_loss(self, u: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over all V items: u (batch, e), targets (batch,) or (batch, T) -> scalar."""
        logits = self.full_scores(u) / self.cfg.temperature  # (batch, V)
        if targets.dim() == 1:
            return F.cross_entropy(logits, targets)  # ()
        b, j = torch.nonzero(targets >= 0, as_tuple=True)  # (N,) the valid (row, target) pairs
        nll = -F.log_softmax(logits, dim=1)[b, targets[b, j]]  # (N,)
        return _mean_over_targets(nll, b, len(u))

    def sampled_softmax_loss(
        self, u: Tensor, targets: Tensor, negatives: Tensor | None = None
    ) -> Tensor:
        """Mean sampled-softmax cross-entropy: u (batch, e), targets (batch,) or (batch, T) -> scalar.

        negatives (m,) are shared by the batch; drawn by ``sample_negatives`` if None.
        """
        if negatives is None:
            negatives = self.sample_negatives()  # (m,)
        t = self.cfg.temperature
        u = self.user(u)  # (batch, e)
        neg = u @ self._items(negatives).T / t - self.log_q[negatives]  # (batch, m)
        if targets.dim() == 1:
            pos = (u * self._items(targets)).sum(1) / t - self.log_q[targets]  # (batch,)
            hit = negatives.unsqueeze(0) == targets.unsqueeze(1)  # (batch, m) accidental hits
            neg = neg.masked_fill(hit, float("-inf"))  # (batch, m)
            logits = torch.cat([pos.unsqueeze(1), neg], dim=1)  # (batch, 1 + m)
            zeros = torch.zeros_like(targets)  # (batch,) the target is class 0
            return F.cross_entropy(logits, zeros)  # ()
        b, j = torch.nonzero(targets >= 0, as_tuple=True)  # (N,) the valid (row, target) pairs
        y = targets[b, j]  # (N,)
        pos = (u[b] * self._items(y)).sum(1) / t - self.log_q[y]  # (N,)
        # -log softmax of class 0 among (target, negatives other than the target). With lse the
        # log-sum-exp of all the row's negatives and c the target's copies among them (each
        # with logit pos): nll = log(exp(pos) + exp(lse) - c exp(pos)) - pos
        #                      = lse - pos + log1p((1 - c) exp(pos - lse)).
        # c = 0: softplus(pos - lse). c >= 1: pos - lse <= -log c, so 0 < 1 - (c-1) exp(.) <= 1.
        lse = torch.logsumexp(neg, dim=1)[b]  # (N,)
        srt, _ = negatives.sort()  # (m,)
        c = torch.searchsorted(srt, y, right=True) - torch.searchsorted(srt, y)  # (N,) copies drawn
        d = pos - lse  # (N,)
        hit = torch.log1p(-(c - 1).clamp(min=0) * d.clamp(max=0).exp())  # (N,) safe on both branches
        nll = -d + torch.where(c == 0, F.softplus(d), hit)  # (N,)
        return _mean_over_targets(nll, b, len(u))


def _mean_over_targets(nll: Tensor, rows: Tensor, batch: int) -> Tensor:
    """Mean over rows with a target of the mean over their targets: nll (N,) of rows (N,) -> ()."""
    n = torch.bincount(rows, minlength=batch)  # (batch,) targets per row
    total = torch.zeros(batch, dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)  # (batch,)
    return (total[n > 0] / n[n > 0]).mean()  # ()
