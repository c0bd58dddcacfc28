"""YouTube-DNN: DR's softmax model trained alone and retrieved by brute force.

This is the paper's "brute force" baseline (and its Table 2's "YouTube product-DNN"):
the same user encoder (GRU or mean-pool) and sampled-softmax output embeddings as DR's
reranker, trained with the reranker loss only (`reranker.loss`), for as many epochs as DR trains its
softmax model (``train.epochs_joint``), with the same batches, optimiser and seed.
Retrieval is an exact inner-product search over all V items (``BruteForce``).

Artefact directory: ``config.toml``, ``model.safetensors`` (encoder + reranker weights
and the unigram counts), ``meta.json``, ``item_ids.npy``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Self

import numpy as np
import torch
from torch import nn

from .baselines import BruteForce
from .config import Config
from .data.dataset import Dataset, as_ragged, pad_ragged
from .encoder import UserEncoder
from .errors import DRError
from .examples import Examples
from .model import FORMAT_VERSION, load_net, read_model_dir, write_model_dir
from .net import eval_mode, uses_sparse_embeddings
from .recommender import Recommender
from .reranker import Reranker
from .state import make_optimizers


class SoftmaxNet(nn.Module):
    """User encoder + sampled-softmax output embeddings (V, e)."""

    def __init__(self, n_items: int, cfg: Config, item_counts: np.ndarray | None = None):
        super().__init__()
        sparse = uses_sparse_embeddings(cfg, n_items)
        self.encoder = UserEncoder(n_items, cfg.encoder, sparse)
        self.reranker = Reranker(n_items, cfg.encoder.e, cfg.reranker, item_counts, cfg.train.seed, sparse)
        counts = np.zeros(n_items, dtype=np.int64) if item_counts is None else item_counts
        self.register_buffer("item_counts", torch.as_tensor(np.asarray(counts, dtype=np.int64)))


class YouTubeDNN(Recommender):
    name = "youtube-dnn"

    def __init__(self, config: Config | None = None):
        self.config = (config or Config()).validate()
        self.net: SoftmaxNet | None = None
        self.item_ids: np.ndarray | None = None
        self.log: list[dict] = []
        self._exact: BruteForce | None = None

    def fit(self, dataset: Dataset, log=print) -> Self:
        cfg, T = self.config, self.config.train
        if T.threads:
            torch.set_num_threads(T.threads)
        torch.manual_seed(T.seed)
        rng = np.random.default_rng(T.seed)
        ex = Examples(dataset, cfg.encoder.max_seq_len, T.context)
        if len(ex) == 0:
            raise DRError("the data set has no training examples (every training row is shorter than 2)")
        V = dataset.n_items
        self.net = net = SoftmaxNet(V, cfg, ex.item_counts(V))
        self.item_ids = dataset.item_ids
        opts = make_optimizers(net, T.lr, T.weight_decay)
        self.log = []
        for epoch in range(T.epochs_joint):
            net.train()
            order = rng.permutation(len(ex))
            if T.max_examples_per_epoch:
                order = order[: T.max_examples_per_epoch]
            t0, total = time.perf_counter(), 0.0
            for idx in np.array_split(order, max(1, -(-len(order) // T.batch_size))):
                hist, lengths, y = ex.batch(idx)
                loss = net.reranker.loss(net.encoder(hist, lengths), y)  # ()
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in opts:
                    opt.step()
                total += loss.item() * len(idx)
            entry = {"epoch": epoch + 1, "Q_softmax": -total / len(order),
                     "examples": len(order), "seconds": time.perf_counter() - t0}
            self.log.append(entry)
            log(f"youtube-dnn epoch {entry['epoch']} Q_softmax {entry['Q_softmax']:.3f} "
                f"| {entry['seconds']:.1f}s")
        net.eval()
        self._exact = None
        return self

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if self.net is None:
            raise DRError("the YouTubeDNN model is not trained: call fit() or load()")

    @torch.no_grad()
    def user_embeddings(self, histories) -> np.ndarray:
        """(n, e) float32 user embeddings."""
        self._check_fitted()
        hist = as_ragged(histories)
        eval_mode(self.net)
        out = []
        for lo in range(0, len(hist), 4096):
            rows = np.arange(lo, min(lo + 4096, len(hist)))
            h, lens = pad_ragged(hist, self.config.encoder.max_seq_len, rows)
            u = self.net.encoder(torch.from_numpy(h), torch.from_numpy(lens))  # (rows, e)
            out.append(self.net.reranker.user(u).numpy())  # as the reranker scores it
        return np.concatenate(out) if out else np.zeros((0, self.config.encoder.e), dtype=np.float32)

    def recommend(self, histories, k: int, exclude_history: bool = False):
        self._check_fitted()
        if self._exact is None:
            self._exact = BruteForce(self.net.reranker.item_embeddings(), encode=self.user_embeddings)
        out = self._exact.recommend(histories, k, exclude_history)
        self.last_items_scored = self._exact.last_items_scored
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        self._check_fitted()
        tensors = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"format_version": FORMAT_VERSION, "name": self.name,
                "n_items": int(self.net.reranker.n_items), "log": self.log}
        ids = self.item_ids if self.item_ids is not None else np.arange(self.net.reranker.n_items)
        write_model_dir(path, self.config, tensors, meta, ids)

    @classmethod
    def load(cls, path) -> Self:
        path = Path(path)
        cfg, tensors, meta, item_ids = read_model_dir(path, cls.name)
        model = cls(cfg)
        model.net = load_net(lambda: SoftmaxNet(int(meta["n_items"]), cfg), tensors, path)
        model.item_ids, model.log = item_ids, meta.get("log", [])
        return model
