"""YouTube-DNN: DR's softmax model trained alone and retrieved by brute force.

This is the paper's "brute force" baseline (and its Table 2's "YouTube product-DNN"):
the same user encoder (GRU or mean-pool) and sampled-softmax output embeddings as DR's
reranker, trained with the sampled softmax only, for as many epochs as DR trains its
softmax model (``train.epochs_joint``), with the same batches, optimiser and seed.
Retrieval is an exact inner-product search over all V items (``BruteForce``).

Artefact directory: ``config.toml``, ``model.safetensors`` (encoder + reranker weights
and the unigram counts), ``meta.json``, ``item_ids.npy``.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .artifacts import atomic_dir, read_json
from .baselines import BruteForce
from .config import Config
from .data.dataset import Dataset, as_ragged, pad_ragged
from .encoder import UserEncoder
from .errors import DRError
from .recommender import Recommender
from .reranker import Reranker

FORMAT_VERSION = 1


class SoftmaxNet(nn.Module):
    """User encoder + sampled-softmax output embeddings (V, e)."""

    def __init__(self, n_items: int, cfg: Config, item_counts: np.ndarray | None = None):
        super().__init__()
        from .model import uses_sparse_embeddings

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
        from .train import Examples, make_optimizers

        cfg, T = self.config, self.config.train
        if T.threads:
            torch.set_num_threads(T.threads)
        torch.manual_seed(T.seed)
        rng = np.random.default_rng(T.seed)
        ex = Examples(dataset, cfg.encoder.max_seq_len, T.context)
        if len(ex) == 0:
            raise DRError("the data set has no training examples (every training row is shorter than 2)")
        V = dataset.n_items
        self.net = net = SoftmaxNet(V, cfg, np.bincount(ex.targets, minlength=V))
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
                loss = net.reranker.sampled_softmax_loss(net.encoder(hist, lengths), y)  # ()
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
        self.net.eval()
        out = []
        for lo in range(0, len(hist), 4096):
            rows = np.arange(lo, min(lo + 4096, len(hist)))
            h, lens = pad_ragged(hist, self.config.encoder.max_seq_len, rows)
            out.append(self.net.encoder(torch.from_numpy(h), torch.from_numpy(lens)).numpy())
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
        with atomic_dir(path) as tmp:
            (tmp / "config.toml").write_text(self.config.to_toml())
            save_file(tensors, str(tmp / "model.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            ids = self.item_ids if self.item_ids is not None else np.arange(self.net.reranker.n_items)
            np.save(tmp / "item_ids.npy", np.asarray(ids), allow_pickle=False)

    @classmethod
    def load(cls, path) -> Self:
        path = Path(path)
        if not path.is_dir():
            raise DRError(f"model directory {path} not found")
        meta = read_json(path / "meta.json", "model meta")
        if meta.get("format_version") != FORMAT_VERSION or meta.get("name") != cls.name:
            raise DRError(f"{path} is not a {cls.name} model of format {FORMAT_VERSION}")
        try:
            cfg = Config.from_dict(tomllib.loads((path / "config.toml").read_text()), str(path))
            tensors = load_file(str(path / "model.safetensors"))
            item_ids = np.load(path / "item_ids.npy", allow_pickle=False)
        except DRError:
            raise
        except Exception as e:  # missing files, bad TOML, safetensors' own header errors
            raise DRError(f"model {path} is incomplete or corrupt ({e})") from None
        V = int(meta.get("n_items", -1))
        model = cls(cfg)
        model.net = SoftmaxNet(V, cfg, tensors["item_counts"].numpy() if "item_counts" in tensors else None)
        try:
            model.net.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise DRError(f"model {path}: weights do not match config.toml "
                          f"({str(e).strip().splitlines()[0]})") from None
        if len(item_ids) != V:
            raise DRError(f"model {path}: item_ids.npy has {len(item_ids)} ids, expected {V}")
        model.item_ids, model.log = item_ids, meta.get("log", [])
        model.net.eval()
        return model
