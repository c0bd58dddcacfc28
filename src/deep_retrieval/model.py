"""DeepRetrieval: the recommender that ties the parts together.

    history -> encoder -> user embedding -> beam search over the K x D structure (B paths)
            -> candidate items = union of the items on those paths (CSR path -> items)
            -> rerank the candidates with the softmax model -> top-k

``DRNet`` holds the trainable parts; ``DeepRetrieval`` adds the item -> paths
assignment pi (V, J), the path index, the M-step's score table and the config, and
honours the recommender contract (fit / recommend / save / load). Training lives in
``train.py``.

Artefact directory (written atomically; every file is checked on load):

    config.toml         the Config
    model.safetensors   DRNet weights + the assignment pi + the M-step score table
    meta.json           format version, n_items, training log
    item_ids.npy        original item id of each dense item (no pickle)
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .artifacts import atomic_dir, read_json
from .beam import beam_search
from .config import Config
from .data.dataset import Dataset, Ragged, as_ragged, pad_ragged
from .encoder import UserEncoder
from .errors import DRError
from .mstep import ScoreTable
from .paths import PathIndex
from .recommender import Recommender, pairs_in_history
from .reranker import Reranker
from .structure import StructureModel, from_flat, to_flat

FORMAT_VERSION = 1
# train.sparse_embeddings = "auto": sparse item-embedding gradients (+ SparseAdam) from this
# many items on; below it a dense gradient is cheaper than coalescing a sparse one
SPARSE_FROM_ITEMS = 100_000
RERANK_FLOATS = 1 << 25  # most floats one rerank block gathers (128 MB)


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


def write_model_dir(path, config: Config, tensors: dict, meta: dict, item_ids) -> None:
    """A model directory, atomically: config.toml, model.safetensors, meta.json, item_ids.npy."""
    with atomic_dir(path) as tmp:
        (tmp / "config.toml").write_text(config.to_toml())
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        np.save(tmp / "item_ids.npy", np.asarray(item_ids), allow_pickle=False)


def read_model_dir(path: Path, name: str | None = None) -> tuple[Config, dict, dict, np.ndarray]:
    """(config, tensors, meta, item_ids) of a model directory; every defect is one DRError.

    ``name``: the model kind ``meta.json`` must name (DeepRetrieval's meta names none).
    """
    if not path.is_dir():
        raise DRError(f"model directory {path} not found")
    meta = read_json(path / "meta.json", "model meta")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DRError(f"model {path}: format_version {meta.get('format_version')!r}, "
                      f"expected {FORMAT_VERSION}")
    if meta.get("name") != name:
        raise DRError(f"model {path} is a {meta.get('name') or 'dr'} model, not {name or 'dr'}")
    cfg_file = path / "config.toml"
    if not cfg_file.is_file():
        raise DRError(f"model {path} has no config.toml")
    try:
        cfg = Config.from_dict(tomllib.loads(cfg_file.read_text()), str(cfg_file))
    except tomllib.TOMLDecodeError as e:
        raise DRError(f"model {path}: config.toml is not valid TOML: {e}") from None
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise DRError(f"model {path} has no model.safetensors")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types on corrupt headers
        raise DRError(f"model {path}: model.safetensors is corrupt ({e})") from None
    try:
        item_ids = np.load(path / "item_ids.npy", allow_pickle=False)
    except (FileNotFoundError, ValueError) as e:
        raise DRError(f"model {path}: item_ids.npy missing or unreadable ({e})") from None
    V = int(meta.get("n_items", -1))
    if len(item_ids) != V:
        raise DRError(f"model {path}: item_ids.npy has {len(item_ids)} ids, expected {V}")
    return cfg, tensors, meta, item_ids


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


class DeepRetrieval(Recommender):
    """Deep Retrieval (Gao et al. 2020) behind the recommender contract."""

    name = "dr"

    def __init__(self, config: Config | None = None):
        self.config = (config or Config()).validate()
        self.net: DRNet | None = None
        self.assignment: np.ndarray | None = None  # (V, J) int64 flat path ids
        self.scores: ScoreTable | None = None  # the M-step's streaming s[v, c]
        self.item_ids: np.ndarray | None = None  # (V,) original ids
        self.log: list[dict] = []  # one entry per epoch
        self._index: PathIndex | None = None
        self._tables: list[Tensor] | None = None
        self._lookup: dict[str, int] | None = None  # original id -> dense index

    # ------------------------------------------------------------------ training
    def fit(self, dataset: Dataset, log=print) -> Self:
        from .train import fit

        fit(self, dataset, log=log)
        self._lookup = None
        return self

    def set_assignment(self, assignment: np.ndarray) -> None:
        self.assignment = np.ascontiguousarray(assignment, dtype=np.int64)  # (V, J)
        self._index = PathIndex(self.assignment)

    def invalidate(self) -> None:
        """Forget caches computed from the weights (call after a gradient step)."""
        self._tables = None

    # ------------------------------------------------------------------ inference
    @property
    def n_items(self) -> int:
        self._check_fitted()
        return self.net.reranker.n_items

    def _check_fitted(self) -> None:
        if self.net is None or self.assignment is None:
            raise DRError("the DeepRetrieval model is not trained: call fit() or load()")

    def _check_ids(self, hist: Ragged) -> None:
        V = self.net.reranker.n_items
        if len(hist.values) and (hist.values.min() < 0 or hist.values.max() >= V):
            bad = hist.values[(hist.values < 0) | (hist.values >= V)][0]
            raise DRError(f"history item index {bad} is outside [0, {V})")

    def _padded(self, hist: Ragged, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        padded, lengths = pad_ragged(hist, self.config.encoder.max_seq_len, rows)
        return torch.from_numpy(padded), torch.from_numpy(lengths)

    def _prefix_tables(self) -> list[Tensor]:
        if self._tables is None:
            with torch.no_grad():
                self._tables = self.net.structure.prefix_tables()
        return self._tables

    @torch.no_grad()
    def user_embeddings(self, histories, which: str = "rr") -> np.ndarray:
        """(n, e) float32 user embeddings: ``which`` = "rr" (reranker) or "str" (structure)."""
        self._check_fitted()
        hist = as_ragged(histories)
        self._check_ids(hist)
        self.net.eval()
        out = []
        for lo in range(0, len(hist), 4096):
            h, lens = self._padded(hist, np.arange(lo, min(lo + 4096, len(hist))))
            enc = self.net.encode_rr if which == "rr" else self.net.enc_str
            out.append(enc(h, lens).numpy())
        e = self.config.encoder.e
        return np.concatenate(out) if out else np.zeros((0, e), dtype=np.float32)

    @torch.no_grad()
    def beam_search(self, histories, B: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-B paths of each user: ``paths`` (n, B', D) int64 and ``logp`` (n, B')."""
        self._check_fitted()
        hist = as_ragged(histories)
        self._check_ids(hist)
        self.net.eval()
        B = B or self.config.beam.B
        h, lens = self._padded(hist, np.arange(len(hist)))
        u_str = self.net.enc_str(h, lens)  # (n, e)
        paths, logp = beam_search(self.net.structure, u_str, B, self._prefix_tables())
        return paths.numpy(), logp.numpy()

    @torch.no_grad()
    def recommend(
        self, histories, k: int, exclude_history: bool = False, B: int | None = None,
        batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search (B paths) -> candidates on those paths -> rerank -> top-k."""
        self._check_fitted()
        hist = as_ragged(histories)
        self._check_ids(hist)
        if k < 1:
            raise DRError(f"k must be >= 1, got {k}")
        self.net.eval()
        B = B or self.config.beam.B
        K = self.config.structure.K
        n = len(hist)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        scored = np.zeros(n, dtype=np.int64)
        tables = self._prefix_tables()
        for lo in range(0, n, batch_size):
            rows = np.arange(lo, min(lo + batch_size, n))
            h, lens = self._padded(hist, rows)
            u_str, u_rr = self.net.encode(h, lens)  # (b, e) each
            paths, _ = beam_search(self.net.structure, u_str, B, tables)  # (b, B', D)
            cands = self._index.candidates(to_flat(paths, K).numpy())  # b rows of item ids
            if exclude_history:
                keep = ~pairs_in_history(cands.row_ids(), cands.values, hist.take(rows))
                cands = Ragged.from_lengths(
                    cands.values[keep], np.bincount(cands.row_ids()[keep], minlength=len(rows))
                )
            scored[rows] = cands.lengths
            padded, _ = pad_ragged(cands, max_len=int(cands.lengths.max(initial=0)))
            cand = torch.from_numpy(padded)  # (b, m) every candidate, padded -1
            width = cand.shape[1]
            # score in row blocks so the (rows, m, e) gather stays under ~128 MB
            step = max(1, RERANK_FLOATS // max(width * u_rr.shape[1], 1))
            s = torch.cat([self.net.reranker.score(u_rr[i : i + step], cand[i : i + step])
                           for i in range(0, len(rows), step)])  # (b, m), -inf at pads
            kk = min(k, width)
            top_s, top_j = torch.topk(s, kk, dim=1)  # (b, kk)
            top_ids = cand.gather(1, top_j)  # (b, kk)
            finite = torch.isfinite(top_s)
            ids[rows, :kk] = torch.where(finite, top_ids, -1).numpy()
            scores[rows, :kk] = torch.where(finite, top_s, float("-inf")).numpy()
        self.last_items_scored = scored
        return ids, scores

    def as_recommenders(self, with_hnsw: bool = False) -> dict[str, Recommender]:
        """DR plus its brute-force twin (the same reranker over all items) and HNSW on it."""
        from .baselines import HNSW, BruteForce

        emb = self.net.reranker.item_embeddings()  # (V, e)
        out: dict[str, Recommender] = {
            "dr": self,
            "brute-force": BruteForce(emb, encode=self.user_embeddings),
        }
        if with_hnsw:
            out["hnsw"] = HNSW(emb, encode=self.user_embeddings).fit(None)
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        self._check_fitted()
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tensors["assignment"] = torch.from_numpy(self.assignment)
        if self.scores is not None:
            tensors["scores.paths"] = torch.from_numpy(self.scores.paths)
            tensors["scores.values"] = torch.from_numpy(self.scores.scores)
        meta = {
            "format_version": FORMAT_VERSION,
            "n_items": int(self.net.reranker.n_items),
            "log": self.log,
        }
        item_ids = self.item_ids if self.item_ids is not None else np.arange(len(self.assignment))
        write_model_dir(path, self.config, tensors, meta, item_ids)

    @classmethod
    def load(cls, path) -> Self:
        path = Path(path)
        cfg, tensors, meta, item_ids = read_model_dir(path)
        V = int(meta.get("n_items", -1))
        model = cls(cfg)
        state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        model.net = load_net(lambda: DRNet(V, cfg), state, path)
        if "assignment" not in tensors:
            raise DRError(f"model {path}: model.safetensors lacks the path assignment")
        pi = tensors["assignment"].numpy()
        S = cfg.structure
        if pi.shape != (V, S.J) or pi.min() < 0 or pi.max() >= S.K**S.D:
            raise DRError(f"model {path}: path assignment of shape {pi.shape} does not match "
                          f"n_items={V}, J={S.J}, K^D={S.K**S.D}")
        model.set_assignment(pi)
        if "scores.paths" in tensors:
            model.scores = ScoreTable(tensors["scores.paths"].numpy(), tensors["scores.values"].numpy())
        model.item_ids, model.log = item_ids, meta.get("log", [])
        return model

    # ------------------------------------------------------------------ helpers
    def item_paths(self) -> np.ndarray:
        """(V, J, D) the node of every layer on every path of every item."""
        self._check_fitted()
        S = self.config.structure
        return from_flat(self.assignment, S.K, S.D)

    def path_groups(self, relabel: np.ndarray | None = None) -> Ragged:
        """The items of every non-empty path as rows of a Ragged (``relabel[item]`` if given)."""
        self._check_fitted()
        items = self._index.items if relabel is None else relabel[self._index.items]
        return Ragged(items, self._index.indptr)

    def dense_ids(self, original) -> np.ndarray:
        """Map original item ids (as saved from the data set) to dense indices."""
        self._check_fitted()
        if self._lookup is None:  # built once: a server maps ids on every request
            self._lookup = {str(x): i for i, x in enumerate(self.item_ids.tolist())}
        out = []
        for x in original:
            if str(x) not in self._lookup:
                raise DRError(f"item id {x!r} is not in the model's catalogue")
            out.append(self._lookup[str(x)])
        return np.asarray(out, dtype=np.int64)
