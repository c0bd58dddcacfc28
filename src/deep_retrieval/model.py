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
    meta.json           format version, n_items, training log, the picked blend (if any)
    item_ids.npy        original item id of each dense item (no pickle)
    blend/              the blend's fitted item-item model (a saved baseline; only when w > 0)

With ``config.blend.scorer`` set, ``fit`` ends by fitting that baseline on the training rows
and picking the blend's weight w and eps on the validation users (``fit_blend``); the model
then ranks its candidates by the reranker + w * log(scorer / |history| + eps) (``blend.py``),
in ``recommend``, ``dr retrieve`` and ``dr serve`` alike. w = 0 (picked or set) is the
reranker alone.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .artifacts import atomic_dir, read_json
from .beam import beam_search
from .blend import Blend, LogMean
from .config import Config
from .data.dataset import Dataset, Ragged, as_ragged
from .errors import DRError, InvalidInputError
from .fast import Retriever
from .mstep import ScoreTable
from .net import SPARSE_FROM_ITEMS, DRNet, eval_mode, load_net, uses_sparse_embeddings
from .paths import PathIndex
from .recommender import Recommender
from .rerank import Reranked, pick_blend
from .retrieval import candidates, net_device, padded, recommend
from .state import Checkpointer, TrainState, _rank_world, load_checkpoint
from .structure import from_flat
from .train import train

__all__ = ["DeepRetrieval", "DRNet", "FORMAT_VERSION", "SPARSE_FROM_ITEMS", "load_net", "read_model_dir",
           "uses_sparse_embeddings", "write_model_dir"]

FORMAT_VERSION = 1


def write_model_dir(path, config: Config, tensors: dict, meta: dict, item_ids,
                    blend_scorer: Recommender | None = None) -> None:
    """A model directory, atomically: config.toml, model.safetensors, meta.json, item_ids.npy
    (and ``blend/``, the blend's fitted scorer, when given)."""
    with atomic_dir(path, "model") as tmp:
        if blend_scorer is not None:  # first: once meta.json is there, tmp is a model, not to write into
            blend_scorer.save(tmp / "blend")
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
        self._retriever: Retriever | None = None  # cache: the numpy serving arrays (CPU serving)
        self._lookup: dict[str, int] | None = None  # original id -> dense index
        # the blend picked after training (config.blend): {"scorer", "w", "eps", "validation"}
        self.blend: dict | None = None
        self.blend_scorer: Recommender | None = None  # its fitted baseline (w > 0 only)
        self._final: Blend | None = None  # cache: Blend([reranker, LogMean(scorer)], [1, w])

    # ------------------------------------------------------------------ training
    def fit(
        self, dataset: Dataset, log=print, checkpoint: Checkpointer | None = None,
        resume: str | Path | None = None, device: str | None = None,
    ) -> Self:
        """Train on ``dataset`` (the EM loop of ``train.py``) and return self.

        ``checkpoint``: writes the training state as the run goes (``state.Checkpointer``).
        ``resume``: a checkpoint file to continue from instead of starting afresh; its config
        replaces this model's (the run goes on exactly as it was started).
        ``device``: replaces ``config.train.device`` ("auto", "cpu", "cuda", "cuda:N").
        With ``config.blend.scorer`` set, the blend is then fitted (``fit_blend``; in data-parallel
        training by rank 0 alone, the rank that saves the model).
        """
        if not isinstance(dataset, Dataset):
            raise InvalidInputError(f"fit() takes a Dataset (Dataset.load(dir) or prepare(...)), "
                          f"not {type(dataset).__name__}")
        if resume is not None:
            state = load_checkpoint(resume, dataset, device)
            self.config = state.config
            self._check_blend_data(dataset)
        else:
            if device is not None:
                self.config.train.device = device
            if self.config.train.epochs_joint + self.config.train.epochs_dr == 0:
                raise DRError("invalid config: train.epochs_joint + train.epochs_dr is 0: nothing to train")
            self._check_blend_data(dataset)  # before any work
            state = TrainState.new(self.config, dataset)
        train(state, dataset, log=log, checkpoint=checkpoint)
        self._adopt(state, dataset.item_ids)
        self.blend = self.blend_scorer = None
        if self.config.blend.scorer and _rank_world()[0] == 0:  # data parallel: rank 0 saves the model
            self.fit_blend(dataset, log=log)
        return self

    def fit_blend(self, dataset: Dataset, log=print) -> Self:
        """Fit ``config.blend.scorer`` on ``dataset``'s training rows and pick the blend's w and
        eps among ``config.blend.weights`` x ``config.blend.eps``: the best recall@train.val_k
        of the blended DR at beam.B (the beam it serves at) on the validation users, ties to the
        first tried (put w = 0 first to prefer the reranker alone). Test users are never read.
        ``dataset`` must be the one the model was trained on (same items)."""
        self._check_fitted()
        b, k = self.config.blend, self.config.train.val_k
        if not b.scorer:
            raise DRError("fit_blend: config.blend.scorer is empty: no baseline to blend with")
        self._check_blend_data(dataset)
        if self.item_ids is not None and not np.array_equal(np.asarray(dataset.item_ids), self.item_ids):
            raise InvalidInputError(f"fit_blend: the data set's {dataset.n_items:,} items are not the "
                                    f"model's {self.n_items:,}: pick the blend on the data the model was "
                                    "trained on")
        from .evaluate import baseline

        scorer = baseline(b.scorer).fit(dataset)
        self.blend = self.blend_scorer = None
        self.invalidate()
        blend, rows = pick_blend(self, scorer, dataset, b.weights, b.eps, k, b.exclude_history)
        w, eps = blend.weights[1], blend.parts[1].eps
        best = next(r for r in rows if (r["w"], r["eps"]) == (w, eps))
        self.blend = {"scorer": b.scorer, "w": w, "eps": eps, "k": k, "B": self.config.beam.B,
                      "exclude_history": b.exclude_history, "validation": rows}
        if w > 0:  # pick_blend's blend is the one final_scorer would build
            self.blend_scorer, self._final = scorer, blend
        alone = next((f"; the reranker alone {r['recall']:.4f}" for r in rows if r["w"] == 0), "")
        log(f"blend: {b.scorer}: w {w} eps {eps} (validation recall@{k} at B {self.config.beam.B} "
            f"{best['recall']:.4f}{alone})")
        return self

    def _check_blend_data(self, dataset: Dataset) -> None:
        if self.config.blend.scorer and len(dataset.val) == 0:
            raise InvalidInputError("blend.scorer: the blend's weight is picked on validation users and "
                                    "the data set has none (prepare it with --val-users N)")

    def partial_fit(self, users, items, times=None, epochs: int = 1, log=print, history=None) -> Self:
        """Continue training on new interactions (original user and item ids, optional times).

        ``history``: (users, items, times or None) of earlier interactions; the new log's
        users' ones precede their new items as inputs, never as targets.

        New items get embedding rows and paths (placed by the M-step with the size penalty),
        old items keep theirs with their scores decayed by eta; the id map grows. See
        ``update.py``.
        """
        from .update import update

        return update(self, users, items, times, epochs=epochs, log=log, history=history)

    def _adopt(self, state: TrainState, item_ids: np.ndarray) -> None:
        """Take the trained parts of a finished training state (a blend stays: ``fit`` refits
        it, ``update`` keeps it while the catalogue does not grow)."""
        self.net, self.scores, self.log = state.net.eval(), state.scores, state.log
        self.item_ids = item_ids
        self.set_assignment(state.assignment)
        self.invalidate()
        self._lookup = None

    def to(self, device) -> Self:
        """Move the network to ``device`` ("cpu", "cuda", a torch.device) for inference."""
        from .state import resolve_device

        self._check_fitted()
        dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.net.to(dev)
        self.invalidate()
        return self

    def set_assignment(self, assignment: np.ndarray) -> None:
        self.assignment = np.ascontiguousarray(assignment, dtype=np.int64)  # (V, J)
        self._index = PathIndex(self.assignment)
        self._retriever = None

    def invalidate(self) -> None:
        """Forget caches computed from the weights (call after a gradient step)."""
        self._tables = None
        self._final = None
        self._retriever = None

    def retriever(self) -> Retriever:
        """The numpy serving arrays of the current weights and paths (``fast.Retriever``), built
        on first use and kept until ``invalidate`` or ``set_assignment``."""
        self._check_fitted()
        if self._retriever is None:
            self._retriever = Retriever.from_model(self)
        return self._retriever

    def final_scorer(self) -> Blend | None:
        """The blend that ranks the candidates, or None when the reranker alone does (no blend,
        or w = 0): ``Blend([the reranker over all items, LogMean(scorer, eps)], [1, w])``."""
        self._check_fitted()
        if self.blend_scorer is None:
            return None
        if self._final is None:
            from .baselines import BruteForce

            V, emb = self.n_items, self.net.reranker.item_embeddings()  # (V, e) as scored
            parts = [BruteForce(emb, encode=self.user_embeddings),
                     LogMean(self.blend_scorer, self.blend["eps"], V)]
            self._final = Blend(parts, [1.0, float(self.blend["w"])], V)
        return self._final

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
        return padded(hist, self.config, rows, net_device(self.net))

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
        eval_mode(self.net)
        out = []
        for lo in range(0, len(hist), 4096):
            h, lens = self._padded(hist, np.arange(lo, min(lo + 4096, len(hist))))
            if which == "rr":  # as the reranker scores it (unit length for cosine similarity)
                u = self.net.reranker.user(self.net.encode_rr(h, lens))
            else:
                u = self.net.enc_str(h, lens)
            out.append(u.float().cpu().numpy())
        e = self.config.encoder.e
        return np.concatenate(out) if out else np.zeros((0, e), dtype=np.float32)

    @torch.no_grad()
    def beam_search(self, histories, B: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-B paths of each user: ``paths`` (n, B', D) int64 and ``logp`` (n, B')."""
        self._check_fitted()
        hist = as_ragged(histories)
        self._check_ids(hist)
        eval_mode(self.net)
        B = self._beam(B)
        h, lens = self._padded(hist, np.arange(len(hist)))
        u_str = self.net.enc_str(h, lens)  # (n, e)
        paths, logp = beam_search(self.net.structure, u_str, B, self._prefix_tables())
        return paths.cpu().numpy(), logp.float().cpu().numpy()

    def recommend(
        self, histories, k: int, exclude_history: bool = False, B: int | None = None,
        batch_size: int = 1024, blend: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beam search (B paths) -> candidates on those paths -> rerank -> top-k.

        The candidates are ranked by the blend when the model has one (``final_scorer``) and
        ``blend`` is True, else by the jointly trained reranker. A model on the CPU answers
        through ``retrieve`` (the server's path); on a GPU through the torch path of
        ``retrieval.py`` (the training's validation), which ranks the same (tests/test_fast.py).
        """
        hist, B = self._request(histories, k, B)
        if net_device(self.net).type == "cpu":  # the server's path (``retrieve``)
            ids, scores, self.last_items_scored = self._retrieve(
                hist, k, B, hist if exclude_history else None, None, None, blend, batch_size)
            return ids, scores
        final = self.final_scorer() if blend else None  # on a GPU: the torch path (retrieval.py)
        if final is not None:
            ranked = Reranked(self, final, B)
            ids, scores = ranked.recommend(hist, k, exclude_history)
            self.last_items_scored = ranked.last_items_scored
            return ids, scores
        ids, scores, self.last_items_scored = recommend(
            self.net, self._index, self.config, hist, k, B, exclude_history, batch_size,
            self._prefix_tables(),
        )
        return ids, scores

    def retrieve(
        self, histories, k: int, B: int | None = None, drop=None, exclude=None, allow=None,
        blend: bool = True, batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The CPU serving path of ``recommend``, ``dr retrieve`` and ``dr serve``: the torch
        encoder, then ``fast.Retriever.search`` (numpy beam search, candidates, filters, rerank),
        the blend's term added to the reranker's scores when the model has one and ``blend``.

        ``histories``: rows of dense item indices. Filters, dense indices too: ``drop`` one row
        per history of items that user must not get (``drop=histories`` is exclude-history),
        ``exclude`` items nobody gets, ``allow`` the only items anybody gets. Returns ids (n, k)
        (-1 pads), scores (n, k) (-inf pads) and the candidates reranked per user (n,), after
        the filters.
        """
        hist, B = self._request(histories, k, B)
        drop = None if drop is None else as_ragged(drop)
        if drop is not None and len(drop) != len(hist):
            raise InvalidInputError(f"drop has {len(drop)} rows for {len(hist)} histories")
        if net_device(self.net).type != "cpu":
            raise DRError(f"retrieve serves a model on the CPU; this one is on {net_device(self.net)} "
                          "(recommend works on either; model.to('cpu') moves it)")
        return self._retrieve(hist, k, B, drop, exclude, allow, blend, batch_size)

    @torch.inference_mode()
    def _retrieve(self, hist: Ragged, k: int, B: int, drop: Ragged | None, exclude, allow, blend: bool,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``retrieve`` on a checked request."""
        eval_mode(self.net)
        r, n = self.retriever(), len(hist)
        lm = None
        if blend and self.blend_scorer is not None:
            w, lm = np.float32(self.blend["w"]), LogMean(self.blend_scorer, self.blend["eps"], self.n_items)
        parts = []
        for lo in range(0, n, batch_size):
            rows = np.arange(lo, min(lo + batch_size, n))
            whole = len(rows) == n  # one block: no copies of the histories (batch 1's cost)
            part = hist if whole else hist.take(rows)
            h, lens = self._padded(part, np.arange(len(rows)))
            u_str, u_rr = self.net.encode(h, lens)  # (b, e) each
            u_rr = self.net.reranker.user(u_rr)  # as the reranker scores it (cosine: unit)

            def extra(users, cands, part=part):  # the blend's w * LogMean(scorer) per candidate
                return w * lm.score_items(part.take(users), cands).values

            mine = None if drop is None else drop if whole else drop.take(rows)
            parts.append(r.search(u_str.numpy(), u_rr.numpy(), k, B, drop=mine, exclude=exclude,
                                  allow=allow, extra=None if lm is None else extra))
        if not parts:
            return (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros(0, np.int64))
        return tuple(np.concatenate(x) for x in zip(*parts, strict=True))

    def candidates(self, histories, B: int | None = None) -> Ragged:
        """The items on each user's B best paths (what the reranker scores), one row per history."""
        self._check_fitted()
        hist = as_ragged(histories)
        self._check_ids(hist)
        return candidates(self.net, self._index, self.config, hist, self._beam(B),
                          tables=self._prefix_tables())

    def _request(self, histories, k: int, B: int | None) -> tuple[Ragged, int]:
        """A checked request: the histories as a Ragged of known items, k >= 1, and the beam."""
        self._check_fitted()
        hist = as_ragged(histories)
        self._check_ids(hist)
        if k < 1:
            raise DRError(f"k must be >= 1, got {k}")
        return hist, self._beam(B)

    def _beam(self, B: int | None) -> int:
        if B is None:
            return self.config.beam.B
        if isinstance(B, bool) or not isinstance(B, int | np.integer) or B < 1:
            raise InvalidInputError(f"beam size B must be an integer >= 1, got {B!r}")
        return int(B)

    def as_recommenders(self, with_hnsw: bool = False) -> dict[str, Recommender]:
        """DR plus its brute-force twin (the same reranker over all items) and HNSW on it.

        "dr" is DR with its own reranker. A model with a blend adds "dr+blend" (DR as it serves:
        its candidates ranked by the blend) and "blend" (the blend over all items, dr+blend's
        brute-force twin); where w = 0 was picked, these are DR and its reranker over all items.
        """
        from .baselines import HNSW, BruteForce

        emb = self.net.reranker.item_embeddings()  # (V, e)
        out: dict[str, Recommender] = {
            "dr": _OwnReranker(self) if self.blend_scorer is not None else self,
            "brute-force": BruteForce(emb, encode=self.user_embeddings),
        }
        if with_hnsw:
            out["hnsw"] = HNSW(emb, encode=self.user_embeddings).fit(None)
        if self.blend is not None:
            out["dr+blend"], out["blend"] = self, self.final_scorer() or out["brute-force"]
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        self._check_fitted()
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        tensors["assignment"] = torch.from_numpy(self.assignment)
        if self.scores is not None:
            tensors["scores.paths"] = torch.from_numpy(self.scores.paths)
            tensors["scores.values"] = torch.from_numpy(self.scores.scores)
        meta = {
            "format_version": FORMAT_VERSION,
            "n_items": int(self.net.reranker.n_items),
            "log": self.log,
        }
        if self.blend is not None:
            meta["blend"] = self.blend
        item_ids = self.item_ids if self.item_ids is not None else np.arange(len(self.assignment))
        write_model_dir(path, self.config, tensors, meta, item_ids, self.blend_scorer)

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
        model._load_blend(path, meta.get("blend"))
        return model

    def _load_blend(self, path: Path, info) -> None:
        """The blend of ``meta.json`` and, for w > 0, its scorer from ``blend/``."""
        if info is None:
            return
        ok = (isinstance(info, dict) and isinstance(info.get("scorer"), str)
              and all(isinstance(info.get(x), int | float) and not isinstance(info.get(x), bool)
                      for x in ("w", "eps")))
        if not ok or not (np.isfinite(info["w"]) and info["w"] >= 0 and info["eps"] > 0):
            raise DRError(f"model {path}: meta.json's blend is malformed: {info!r}")
        self.blend = info
        if info["w"] == 0:
            return
        from .evaluate import baseline

        try:
            scorer = type(baseline(info["scorer"])).load(path / "blend")
        except DRError as e:
            raise DRError(f"model {path}: the blend's scorer: {e}") from None
        try:  # a smoke test: the scorer must score the model's last item
            scorer.score_items(Ragged.from_lists([[0]]), Ragged.from_lists([[self.n_items - 1]]))
        except DRError as e:
            raise DRError(f"model {path}: the blend's scorer does not fit the model's "
                          f"{self.n_items} items ({e})") from None
        self.blend_scorer = scorer

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


class _OwnReranker(Recommender):
    """A blended DeepRetrieval ranked by its own reranker: the "dr" row of ``as_recommenders``."""

    name = "dr"

    def __init__(self, model: DeepRetrieval):
        self.model = model

    def fit(self, dataset: Dataset) -> Self:
        raise DRError("fit the DeepRetrieval model itself")

    def recommend(self, histories, k: int, exclude_history: bool = False) -> tuple[np.ndarray, np.ndarray]:
        out = self.model.recommend(histories, k, exclude_history, blend=False)
        self.last_items_scored = self.model.last_items_scored
        return out

    def save(self, path) -> None:
        self.model.save(path)

    @classmethod
    def load(cls, path) -> Self:
        return cls(DeepRetrieval.load(path))
