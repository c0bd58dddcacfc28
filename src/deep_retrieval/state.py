"""The training state: everything the EM loop reads and writes, in one object.

``fit`` (a new state), ``--resume`` (a state read back from a checkpoint) and ``dr update``
(a state built from a trained model) all start the same loop (``train.train``) from one of
these::

    config          the Config of the run
    net             DRNet: encoders, structure model, reranker (on ``device``)
    opts            the optimisers (Adam for dense weights, SparseAdam for item tables)
    assignment      (V, J) int64 flat path ids: the item -> paths map pi
    scores          the M-step's streaming score table s[v, c]
    rng             numpy Generator of the epoch permutations (and the initial assignment)
    epoch, step     epochs finished; batches trained since the start
    order, batch    this epoch's permutation of the examples and the batches of it done
    window          the example batches trained on since the last M-step
    log             one dict per finished epoch
    best            early stopping: the best joint epoch's weights, paths and scores (CPU copy)

A checkpoint (``save_checkpoint`` / ``load_checkpoint``) is one file, written atomically,
holding all of it plus the torch RNG streams; the run resumed from it ends with the same
model as the uninterrupted run (bit for bit on one CPU thread).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .artifacts import _temp_name, clean_leftovers
from .config import Config
from .data.dataset import Dataset
from .errors import DRError
from .examples import Examples
from .mstep import ScoreTable
from .net import DRNet, grow, load_net
from .paths import random_assignment

CHECKPOINT_FORMAT = "deep-retrieval checkpoint"
CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when torch sees a GPU, else cpu; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DRError(f"device {name!r} asked for, but torch sees no CUDA GPU on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DRError(f"unknown device {name!r}: use auto, cpu or cuda") from None


def make_optimizers(net: torch.nn.Module, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """SparseAdam for the item-embedding tables (sparse gradients), Adam for everything else.

    A step then costs the same at V = 10^4 and 10^7: SparseAdam updates only the rows a
    batch touched (lazy Adam). ``weight_decay`` applies to the dense parameters only.
    """
    sparse = [m.weight for m in net.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    ids = {id(p) for p in sparse}
    dense = [p for p in net.parameters() if id(p) not in ids]
    # fused: one kernel over all the tensors (7.1 -> 0.7 ms a step for ml-1m's ~0.9M weights)
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=True)
    ]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=lr))
    return opts


def data_fingerprint(ds: Dataset) -> str:
    """sha256 of the training rows and the catalogue size: a resumed run must see the same data."""
    h = hashlib.sha256()
    h.update(np.int64(ds.n_items).tobytes())
    h.update(np.ascontiguousarray(ds.train.offsets, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(ds.train.values, dtype=np.int64).tobytes())
    return h.hexdigest()


@dataclass
class Progress:
    """Where the loop is, and what the current epoch has summed so far (for its log entry)."""

    epoch: int = 0  # epochs finished
    step: int = 0  # batches trained since the start (counts M-step intervals)
    batch: int = 0  # batches of the current epoch done
    loss_str: float = 0.0  # sum over the epoch's examples of -Q_str
    loss_sm: float = 0.0  # ... of -Q_softmax (joint epochs)
    examples: int = 0
    seconds: float = 0.0  # wall time of the epoch so far
    seconds_m: float = 0.0  # of which M-steps
    mstep_info: dict = field(default_factory=dict)  # the last M-step's figures


@dataclass
class TrainState:
    config: Config
    net: DRNet
    opts: list[torch.optim.Optimizer]
    assignment: np.ndarray  # (V, J) int64
    scores: ScoreTable
    rng: np.random.Generator
    device: torch.device
    progress: Progress = field(default_factory=Progress)
    order: np.ndarray | None = None  # (N',) this epoch's permutation of example indices, all ranks
    window: list[np.ndarray] = field(default_factory=list)  # this rank's batches since the last M-step
    log: list[dict] = field(default_factory=list)
    # early stopping with train.restore_best: the best joint epoch so far (its 1-based number)
    # and a CPU copy of what rolling back to it restores (net, assignment, scores)
    best: dict | None = None

    @property
    def n_items(self) -> int:
        return self.assignment.shape[0]

    # ------------------------------------------------------------------ construction
    @classmethod
    def new(cls, cfg: Config, ds: Dataset, ex: Examples | None = None) -> TrainState:
        """A fresh run: random weights (torch seed), random J distinct paths per item (numpy seed)."""
        T, S, E = cfg.train, cfg.structure, cfg.em
        device = resolve_device(T.device)
        if T.threads:
            torch.set_num_threads(T.threads)
        torch.manual_seed(T.seed)
        rng = np.random.default_rng(T.seed)
        ex = ex or Examples(ds, cfg.encoder.max_seq_len, T.context)
        V = ds.n_items
        counts = ex.item_counts(V)  # (V,) N_v over all training pairs
        net = DRNet(V, cfg, item_counts=counts)  # built on the CPU: the same init on any device
        assignment = random_assignment(V, S.J, S.K**S.D, rng)  # (V, J)
        net.to(device)
        return cls(cfg, net, make_optimizers(net, T.lr, T.weight_decay), assignment,
                   ScoreTable.empty(V, E.S), rng, device)


    @classmethod
    def for_update(
        cls, cfg: Config, net: DRNet, assignment: np.ndarray, scores: ScoreTable, ds: Dataset,
        ex: Examples, seed: int,
    ) -> TrainState:
        """Continue a trained model on new data ``ds`` whose catalogue extends the model's.

        Old items keep their weights, paths and (decaying) scores; new items get fresh rows,
        J random distinct paths and empty score rows: the M-step places them. The training
        counts N_v become the old ones plus the new examples'. Optimisers start afresh.
        """
        S, E, T = cfg.structure, cfg.em, cfg.train
        device = resolve_device(T.device)
        if T.threads:
            torch.set_num_threads(T.threads)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        V_old, V = assignment.shape[0], ds.n_items
        counts = ex.item_counts(V)  # (V,)
        counts[:V_old] += net.item_counts.cpu().numpy()
        net = grow(net.cpu(), cfg, counts).to(device)
        fresh = random_assignment(V - V_old, S.J, S.K**S.D, rng) if V > V_old else assignment[:0]
        grown = ScoreTable(np.vstack([scores.paths, np.full((V - V_old, E.S), -1, dtype=np.int64)]),
                           np.vstack([scores.scores, np.zeros((V - V_old, E.S), dtype=np.float32)]))
        return cls(cfg, net, make_optimizers(net, T.lr, T.weight_decay),
                   np.vstack([assignment, fresh]).astype(np.int64), grown, rng, device)


# ---------------------------------------------------------------------- checkpoints
def checkpoint_path(out) -> Path:
    """Where a run writing the model ``out`` keeps its checkpoint: the file ``<out>.ckpt``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def save_checkpoint(state: TrainState, path, data_fp: str) -> None:
    """Write ``state`` to ``path`` atomically (rank 0 writes; every rank must call it)."""
    rank, world = _rank_world()
    window = np.concatenate(state.window) if state.window else np.zeros(0, dtype=np.int64)
    lengths = np.array([len(w) for w in state.window], dtype=np.int64)
    windows = [(window, lengths)]
    if world > 1:  # each rank trained on its own slice: keep every rank's window
        windows = [None] * world
        dist.all_gather_object(windows, (window, lengths))
    if rank != 0:
        return
    gen = state.net.reranker._gen
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": state.config.to_toml(),
        "data": data_fp,
        "world": world,
        "net": {k: v.detach().cpu() for k, v in state.net.state_dict().items()},
        "opts": [_to_cpu(o.state_dict()) for o in state.opts],
        "assignment": torch.from_numpy(state.assignment),
        "scores.paths": torch.from_numpy(state.scores.paths),
        "scores.values": torch.from_numpy(state.scores.scores),
        "rng": json.dumps(state.rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "negatives_rng": None if gen is None else gen.get_state().cpu(),
        "progress": json.dumps(dataclasses.asdict(state.progress)),
        "order": None if state.order is None else torch.from_numpy(state.order),
        "windows": [(torch.from_numpy(w), torch.from_numpy(n)) for w, n in windows],
        "log": json.dumps(state.log),
        "best": _best_to_obj(state.best),
    }
    path = Path(path)
    tmp = _temp_name(path, "tmp")  # a killed write leaves it; clean_leftovers removes it later
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path, ds: Dataset, device: str | None = None) -> TrainState:
    """The state saved at ``path``; ``ds`` must be the data set the run was training on.

    ``device`` replaces the run's ``train.device`` (bit-exact only on the same device)."""
    path = Path(path)
    if not path.is_file():
        raise DRError(f"no checkpoint at {path} to resume from")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: torch raises several types
        raise DRError(f"checkpoint {path} is unreadable ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise DRError(f"{path} is not a deep-retrieval checkpoint")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise DRError(f"checkpoint {path}: version {obj.get('version')!r}, expected {CHECKPOINT_VERSION}")
    if obj["data"] != data_fingerprint(ds):
        raise DRError(f"checkpoint {path} was written while training on other data than this data set")
    rank, world = _rank_world()
    if obj["world"] != world:
        raise DRError(f"checkpoint {path} was written by {obj['world']} process(es); resume with as many, "
                      f"not {world}")
    import tomllib

    cfg = Config.from_dict(tomllib.loads(obj["config"]), f"checkpoint {path}")
    if device is not None:
        cfg.train.device = device
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    V = ds.n_items
    net = load_net(lambda: DRNet(V, cfg), obj["net"], path).to(device)
    opts = make_optimizers(net, cfg.train.lr, cfg.train.weight_decay)
    for opt, sd in zip(opts, obj["opts"], strict=True):
        opt.load_state_dict(sd)
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(obj["rng"])
    torch.set_rng_state(obj["torch_rng"])
    if obj["negatives_rng"] is not None:
        gen = torch.Generator(device=net.reranker.q.device)
        gen.set_state(obj["negatives_rng"])
        net.reranker._gen = gen
    window, lengths = (x.numpy() for x in obj["windows"][rank])
    state = TrainState(
        cfg, net, opts, obj["assignment"].numpy().copy(),
        ScoreTable(obj["scores.paths"].numpy().copy(), obj["scores.values"].numpy().copy()),
        rng, device,
        progress=Progress(**json.loads(obj["progress"])),
        order=None if obj["order"] is None else obj["order"].numpy().copy(),
        window=np.split(window, np.cumsum(lengths)[:-1]) if len(lengths) else [],
        log=json.loads(obj["log"]),
        best=_best_from_obj(obj.get("best")),
    )
    return state


def _best_to_obj(best: dict | None) -> dict | None:
    if best is None:
        return None
    return {"epoch": best["epoch"], "net": best["net"],
            "assignment": torch.from_numpy(best["assignment"]),
            "scores.paths": torch.from_numpy(best["scores"].paths),
            "scores.values": torch.from_numpy(best["scores"].scores)}


def _best_from_obj(obj: dict | None) -> dict | None:
    if obj is None:
        return None
    return {"epoch": int(obj["epoch"]), "net": obj["net"],
            "assignment": obj["assignment"].numpy().copy(),
            "scores": ScoreTable(obj["scores.paths"].numpy().copy(), obj["scores.values"].numpy().copy())}


class Checkpointer:
    """Decides when to write a checkpoint and writes it: every ``minutes`` of wall time
    and/or every ``every_batches`` batches (0 = never by that rule), always at batch ends."""

    def __init__(self, path, data_fp: str, minutes: float = 10.0, every_batches: int = 0):
        self.path, self.data_fp = Path(path), data_fp
        self.every_s, self.every_batches = minutes * 60.0, every_batches
        self.last = time.monotonic()
        if _rank_world()[0] == 0:  # a killed run's half-written checkpoint
            clean_leftovers(self.path)

    def due(self, state: TrainState) -> bool:
        due = (self.every_s > 0 and time.monotonic() - self.last >= self.every_s) or (
            self.every_batches > 0 and state.progress.step % self.every_batches == 0
        )
        if _rank_world()[1] > 1:  # rank 0's clock decides for everybody
            flag = torch.tensor([int(due)], device=state.device)
            dist.broadcast(flag, 0)
            due = bool(flag.item())
        return due

    def maybe(self, state: TrainState) -> None:
        if self.due(state):
            self.write(state)

    def write(self, state: TrainState) -> None:
        save_checkpoint(state, self.path, self.data_fp)
        self.last = time.monotonic()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
