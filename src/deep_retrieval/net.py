"""The trainable network of Deep Retrieval: encoder(s) + structure model + softmax reranker.

``DRNet`` is what the E-step trains and what a model directory's weights are. It knows
nothing of the item -> paths assignment, the M-step or persistence (``model.py``,
``state.py``, ``train.py`` build on it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .config import Config
from .encoder import UserEncoder
from .errors import DRError
from .reranker import Reranker
from .structure import StructureModel

# train.sparse_embeddings = "auto": sparse item-embedding gradients (+ SparseAdam) from this
# many items on; below it a dense gradient is cheaper than coalescing a sparse one
SPARSE_FROM_ITEMS = 100_000


def uses_sparse_embeddings(cfg: Config, n_items: int) -> bool:
    s = cfg.train.sparse_embeddings
    return s == "yes" or (s == "auto" and n_items >= SPARSE_FROM_ITEMS)


class DRNet(nn.Module):
    """Encoder(s) + structure model + softmax reranker.

    With ``encoder.shared`` one encoder feeds both heads; otherwise the structure model
    and the reranker each have their own item embeddings and GRU (SPEC 5's reading of the
    paper's freeze schedule).
    """

    def __init__(self, n_items: int, cfg: Config, item_counts: np.ndarray | None = None):
        super().__init__()
        e = cfg.encoder.e
        self.shared = cfg.encoder.shared
        sparse = uses_sparse_embeddings(cfg, n_items)
        self.enc_str = UserEncoder(n_items, cfg.encoder, sparse)
        self.enc_rr = None if self.shared else UserEncoder(n_items, cfg.encoder, sparse)
        self.structure = StructureModel(cfg.structure, e)
        self.reranker = Reranker(n_items, e, cfg.reranker, item_counts, seed=cfg.train.seed, sparse=sparse)
        counts = np.zeros(n_items, dtype=np.int64) if item_counts is None else item_counts
        # N_v of the training data: saved with the weights so a loaded model samples the same Q
        self.register_buffer("item_counts", torch.as_tensor(np.asarray(counts, dtype=np.int64)))

    def encode(self, hist: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """User embeddings for the structure model and the reranker: (batch, e) each."""
        u_str = self.enc_str(hist, lengths)  # (batch, e)
        u_rr = u_str if self.enc_rr is None else self.enc_rr(hist, lengths)  # (batch, e)
        return u_str, u_rr

    def encode_rr(self, hist: Tensor, lengths: Tensor) -> Tensor:
        enc = self.enc_str if self.enc_rr is None else self.enc_rr
        return enc(hist, lengths)  # (batch, e)

    def softmax_params(self) -> list[nn.Parameter]:
        """What phase 2 of the schedule freezes: the softmax model's parameters.

        Separate encoders: the reranker's item embeddings and its whole encoder. Shared
        encoder: the reranker's item embeddings and the shared encoder, so phase 2 trains
        the structure model's MLPs and node embeddings only.
        """
        enc = self.enc_str if self.enc_rr is None else self.enc_rr
        return list(self.reranker.parameters()) + list(enc.parameters())


def grow(net: DRNet, cfg: Config, item_counts: np.ndarray) -> DRNet:
    """``net`` for a catalogue grown to ``len(item_counts)`` items (new items at the end).

    The old items' rows and every other weight are copied; the new items' rows keep the fresh
    initialisation of a new DRNet (built with the caller's torch seed). ``item_counts`` (V',)
    replaces the training counts N_v (the reranker's sampling distribution follows them).
    """
    V = net.reranker.n_items
    new = DRNet(len(item_counts), cfg, item_counts=item_counts)
    old_sd, new_sd = net.state_dict(), new.state_dict()
    with torch.no_grad():
        for k, w in new_sd.items():
            o = old_sd[k].to(w.device)
            if k == "item_counts":
                continue
            if o.shape == w.shape:
                w.copy_(o)
            elif o.shape[0] == V + 1:  # an encoder's table: V item rows + the padding row last
                w[:V].copy_(o[:V])
                w[-1].copy_(o[V])
            elif o.shape[0] == V:  # the reranker's output embeddings
                w[:V].copy_(o)
            else:
                raise AssertionError(f"cannot grow {k} from {tuple(o.shape)} to {tuple(w.shape)}")
    return new


def eval_mode(net: nn.Module) -> nn.Module:
    """``net.eval()`` unless the net is in eval mode already: ``eval`` walks every submodule,
    ~0.5 ms a call, more than the rest of a small model's single-user answer."""
    return net.eval() if net.training else net


def load_net(build, state: dict, path: Path) -> nn.Module:
    """``build()``'s module with ``state``'s tensors as its weights, without a second copy.

    The module is built on the meta device (no random init, no memory) and takes the loaded
    tensors themselves (``assign=True``), so a load peaks at one copy of the weights; its
    reranker's sampling buffers, which are not saved, are rebuilt from ``item_counts``.
    """
    with torch.device("meta"):
        net = build()
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DRError(f"model {path}: weights do not match config.toml ({first})") from None
    net.reranker.set_sampling(net.item_counts.numpy())
    return net.eval()
