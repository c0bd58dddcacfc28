"""The K x D structure model (SPEC 2): p(c | x) = prod_d p(c_d | x, c_<d).

Layer d (0-based) is an MLP (hidden sizes ``cfg.hidden``, ReLU) ending in K logits.
Its input is ``concat(u, node_emb[0](c_0), ..., node_emb[d-1](c_{d-1}))`` of width
``e * (d + 1)``: the user embedding plus the embeddings of the nodes already chosen.
Every layer has its own K x e node-embedding table (never one shared table); the last
layer's node is never an input, so there are D - 1 tables.

Each layer's first Linear is kept apart from the rest of its MLP (``first[d]`` and
``rest[d]``) because it is linear in its concatenated input: beam search computes the
user's share ``u @ W[:, :e].T + b`` once per user and adds the prefix's share, looked up
in per-node tables (``prefix_tables``), instead of a matrix product per beam.

Paths are int64 tensors ``(..., D)`` with values in [0, K). A path's flat id is
``sum_d c_d * K^(D-1-d)`` (``to_flat`` / ``from_flat``, shared with the M-step).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import StructureConfig


def to_flat(paths, K: int):
    """Flat id of each path: ``(..., D) -> (...)``, ``sum_d c_d * K^(D-1-d)`` (int64).

    Works on torch tensors and numpy arrays alike.
    """
    flat = paths[..., 0].astype(np.int64) if isinstance(paths, np.ndarray) else paths[..., 0].long()
    for d in range(1, paths.shape[-1]):
        flat = flat * K + paths[..., d]  # (...)
    return flat


def from_flat(flat, K: int, D: int):
    """Inverse of ``to_flat``: ``(...) -> (..., D)`` int64 node ids in [0, K)."""
    powers = [K ** (D - 1 - d) for d in range(D)]
    if isinstance(flat, np.ndarray):
        flat = flat.astype(np.int64, copy=False)
        return np.stack([(flat // p) % K for p in powers], axis=-1)  # (..., D)
    flat = flat.long()
    return torch.stack([(flat // p) % K for p in powers], dim=-1)  # (..., D)


class StructureModel(nn.Module):
    """D per-layer MLPs with per-layer node embeddings; log p of paths and the multi-path loss."""

    def __init__(self, cfg: StructureConfig, e: int):
        super().__init__()
        self.K, self.D, self.e = cfg.K, cfg.D, e
        widths = list(cfg.hidden) + [cfg.K]  # output widths of the MLP's Linears
        # node_emb[d] embeds the node chosen at layer d, an input of layers d+1..D-1
        self.node_emb = nn.ModuleList(nn.Embedding(cfg.K, e) for _ in range(cfg.D - 1))
        # first[d]: Linear(e*(d+1) -> widths[0]); rest[d]: ReLU, Linear, ..., Linear(-> K)
        self.first = nn.ModuleList(nn.Linear(e * (d + 1), widths[0]) for d in range(cfg.D))
        self.rest = nn.ModuleList(_tail(widths) for _ in range(cfg.D))

    # ------------------------------------------------------------ one layer
    def layer_logits(self, u: Tensor, prefix: Tensor) -> Tensor:
        """Logits of layer d = prefix.shape[1]: u (n, e), prefix (n, d) long -> (n, K)."""
        d = prefix.shape[1]
        nodes = [self.node_emb[i](prefix[:, i]) for i in range(d)]  # d x (n, e)
        x = torch.cat([u, *nodes], dim=1)  # (n, e*(d+1))
        return self.rest[d](self.first[d](x))  # (n, K)

    def layer_logprobs(self, u: Tensor, prefix: Tensor) -> Tensor:
        """log p(c_d | u, prefix) for every c_d: u (n, e), prefix (n, d) long -> (n, K)."""
        return F.log_softmax(self.layer_logits(u, prefix), dim=-1)  # (n, K)

    # ------------------------------------------------------------ paths
    def path_logprob(self, u: Tensor, paths: Tensor, users: Tensor | None = None) -> Tensor:
        """log p(c | u) = sum_d log p(c_d | u, c_<d) of every path.

        u (n, e), paths (N, J, D) long, users (N,) long: the row of u that each set of paths
        belongs to (None: N = n, row i) -> (N, J). Layer 0 and the user's share of every later
        layer's first Linear run once per row of u; the prefix's share of that Linear is
        looked up in ``prefix_tables`` (computed with their gradient), so only the layers' other
        Linears run per path.
        """
        N, J, D = paths.shape
        at = (lambda t: t) if users is None else (lambda t: t[users])  # (n, ...) -> (N, ...)
        # layer 0 has no prefix: one pass per user, shared by its paths
        total = at(self.layer_logprobs(u, paths.new_zeros(len(u), 0))).gather(1, paths[:, :, 0])  # (N, J)
        if D == 1:
            return total
        tables = self.prefix_tables()
        total = total.reshape(N * J)  # (N*J,)
        flat = paths.reshape(N * J, D)  # (N*J, D)
        for d in range(1, D):
            up = at(self.user_part(d, u))[:, None, :].expand(N, J, -1).reshape(N * J, -1)  # (N*J, H)
            pre = up + self.prefix_part(tables[d], flat[:, :d])  # (N*J, H)
            logp = self.head_logprobs(d, pre)  # (N*J, K)
            total = total + logp.gather(1, flat[:, d : d + 1]).squeeze(1)  # (N*J,)
        return total.view(N, J)  # (N, J)

    def multipath_loss(self, u: Tensor, paths: Tensor) -> Tensor:
        """-mean_i log sum_j p(pi_j(y_i) | x_i): u (batch, e), paths (batch, J, D) -> scalar.

        This is SPEC 2's Q_str, negated and averaged over the batch.
        """
        logp = self.path_logprob(u, paths)  # (batch, J)
        return -torch.logsumexp(logp, dim=1).mean()  # ()

    def multipath_loss_multi(self, u: Tensor, paths: Tensor, mask: Tensor) -> Tensor:
        """``multipath_loss`` with several targets per user: the mean over users (with at least
        one target) of the mean over the user's targets of -log sum_j p(pi_j(y) | x).

        u (batch, e), paths (batch, T, J, D) long, mask (batch, T) bool (False = padding) ->
        scalar. Only the valid (user, target) pairs are scored. T = 1 with a full mask equals
        ``multipath_loss(u, paths[:, 0])``.
        """
        b, t = torch.nonzero(mask, as_tuple=True)  # (N,) valid pairs
        nll = -torch.logsumexp(self.path_logprob(u, paths[b, t], users=b), dim=1)  # (N,)
        n = mask.sum(1)  # (batch,)
        per_user = torch.zeros(len(u), dtype=nll.dtype, device=nll.device).index_add(0, b, nll)  # (batch,)
        return (per_user[n > 0] / n[n > 0]).mean()  # ()

    # ------------------------------------------------------------ split first Linear (beam)
    def user_part(self, d: int, u: Tensor) -> Tensor:
        """The user's share of layer d's first Linear, bias included: u (n, e) -> (n, H)."""
        lin = self.first[d]
        return F.linear(u, lin.weight[:, : self.e], lin.bias)  # (n, H)

    def prefix_tables(self) -> list[Tensor]:
        """Every node's share of every later layer's first Linear, for beam search.

        ``tables[d]`` (d*K, H), for layer d: row ``i*K + k`` is ``node_emb[i](k)`` times the
        columns of ``first[d].weight`` that read the node of layer i, so the prefix's share of
        (c_0..c_{d-1}) is ``sum_i tables[d][i*K + c_i]`` (see ``prefix_part``); ``tables[0]``
        is empty. Valid for the weights they were computed from.
        """
        K, e = self.K, self.e
        tables = [self.first[0].weight.new_zeros(0, self.first[0].out_features)]  # (0, H)
        for d in range(1, self.D):
            W = self.first[d].weight[:, e:]  # (H, d*e)
            W = W.view(-1, d, e).permute(1, 2, 0)  # (d, e, H)
            E = torch.stack([self.node_emb[i].weight for i in range(d)])  # (d, K, e)
            tables.append(torch.bmm(E, W).reshape(d * K, -1))  # (d*K, H)
        return tables

    def prefix_part(self, table: Tensor, prefix: Tensor) -> Tensor:
        """The prefix's share of layer d's first Linear: tables[d], prefix (..., d) -> (..., H)."""
        d = prefix.shape[-1]
        rows = prefix + torch.arange(d, device=prefix.device) * self.K  # (..., d)
        part = F.embedding_bag(rows.reshape(-1, d), table, mode="sum")  # (N, H) summed over d
        return part.view(*prefix.shape[:-1], table.shape[1])  # (..., H)

    def head_logprobs(self, d: int, pre: Tensor) -> Tensor:
        """Layer d's MLP after its first Linear, then log-softmax: pre (..., H) -> (..., K)."""
        return F.log_softmax(self.rest[d](pre), dim=-1)  # (..., K)


def _tail(widths: list[int]) -> nn.Sequential:
    """ReLU, Linear(widths[0] -> widths[1]), ReLU, ..., Linear(-> widths[-1]) (empty if 1 width)."""
    mods: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        mods += [nn.ReLU(), nn.Linear(a, b)]
    return nn.Sequential(*mods)
