"""Typed configuration: dataclasses with the paper's names, read from and written to TOML.

A config file has one table per dataclass below; every key is optional and
unknown keys or wrong types are errors::

    [structure]
    K = 50
    D = 3
    J = 3
    [beam]
    B = 25
    [em]
    alpha = 3e-5
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from .errors import DRError


@dataclass
class StructureConfig:
    """The K x D structure model (SPEC 2)."""

    K: int = 50  # nodes per layer
    D: int = 3  # layers
    J: int = 3  # paths per item
    hidden: tuple[int, ...] = (256,)  # hidden sizes of each layer's MLP (ReLU)


@dataclass
class EncoderConfig:
    """User encoder: item embeddings + GRU (or mean-pool) over the behaviour sequence."""

    kind: Literal["gru", "mean", "sasrec"] = "gru"  # sasrec: causal self-attention, learned positions
    e: int = 64  # width of the user embedding = node embedding = reranker item embedding
    item_dim: int = 64  # input item-embedding width
    max_seq_len: int = 69  # most recent behaviours kept
    shared: bool = False  # one encoder for the structure model and the reranker
    dropout: float = 0.0  # share of history items dropped (whole items) at training time only
    blocks: int = 2  # sasrec: self-attention blocks
    heads: int = 1  # sasrec: attention heads (must divide item_dim)


@dataclass
class RerankerConfig:
    """Softmax reranker trained with sampled softmax (SPEC 4)."""

    negatives: int = 100  # sampled negatives per batch (shared across the batch)
    sampling: Literal["unigram", "uniform"] = "unigram"  # with logQ correction
    unigram_power: float = 0.75
    # "full": softmax over all V items (no sampling; for catalogues small enough that a
    # (batch, V) score matrix is cheap; dense item-embedding gradients only)
    loss: Literal["sampled", "full"] = "sampled"
    # "cosine": user and item embeddings L2-normalised (item_embeddings() returns unit rows)
    similarity: Literal["dot", "cosine"] = "dot"
    temperature: float = 1.0  # logits = similarity / temperature (training only; ranking ignores it)


@dataclass
class EMConfig:
    """The M-step (SPEC 5)."""

    S: int = 25  # candidate paths kept per item
    alpha: float = 3e-5  # path-size penalty weight
    penalty_power: float = 4.0  # f(|c|) = |c|^p / p
    eta: float = 0.999  # streaming decay
    T: int = 3  # coordinate-descent iterations
    mstep_every: int = 0  # batches between M-steps; 0 = once per epoch (the paper)
    # our addition: an item's current paths stay candidates in coordinate descent, at its
    # row's lowest score, so that crowded beam paths cannot absorb every item (mstep.py)
    explore: bool = False


@dataclass
class BeamConfig:
    B: int = 25  # beam size at serving time
    # serve from a path-major copy of the reranker's item embeddings (one row per (path, item)
    # entry: J x V x e more floats in memory): every user's candidates are then read path by
    # path from consecutive rows, not gathered row by row from the (V, e) table; pays where that
    # table is far larger than the CPU cache (10^6 items and more). Same answers.
    path_major: bool = False


@dataclass
class TrainConfig:
    epochs_joint: int = 2  # phase 1: DR and the softmax model together
    epochs_dr: int = 2  # phase 2: softmax model frozen, DR goes on
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0  # Adam weight decay of the dense parameters (not the item embeddings)
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's default
    max_examples_per_epoch: int = 0  # 0 = all; else a seeded random subset per epoch
    # a training example's input: "prefix" = the items before the target (time-ordered logs,
    # the paper); "others" = the user's other training items, the last max_seq_len of them
    # (logs without a meaningful order: the input then looks like a serving-time history);
    # "user" = one example per user, input = the last max_seq_len items, targets = all of the
    # user's items (a multi-target loss; pair it with encoder.dropout). See examples.py.
    context: Literal["prefix", "others", "user"] = "prefix"
    # sparse item-embedding gradients + SparseAdam (a step's cost then does not grow with V);
    # "auto" = yes from 100,000 items on (below that a dense gradient is cheaper)
    sparse_embeddings: Literal["auto", "yes", "no"] = "auto"
    progress: bool = True
    # early stopping of the joint phase: after this many joint epochs in a row without a
    # better validation recall@val_k (DR's, on the validation users), go on to the DR-only
    # phase; 0 = off (every joint epoch runs)
    patience: int = 0
    # with early stopping on (patience > 0): when the joint phase ends, roll the network, the
    # paths and the score table back to the joint epoch with the best validation recall
    # (a CPU copy of the weights is kept meanwhile; the optimisers' moments are not rolled back)
    restore_best: bool = True
    val_k: int = 10  # the cut-off of the validation recall logged after every epoch
    # the beam of that validation recall (early stopping); 0 = beam.B. A cheaper proxy when the
    # model serves at a wide beam: the blend is still picked at beam.B
    val_B: int = 0
    # where the E-step, the M-step's score collection and validation run: "auto" = a CUDA GPU
    # when torch sees one, else the CPU; "cpu"; "cuda" or "cuda:N". Coordinate descent and
    # the streaming update always run on the CPU (numba). The saved model is device-free.
    device: str = "auto"
    # our addition, for the DR-only epochs (phase 2, the reranker frozen): each example's
    # targets also take the reranker's top `distill` items by brute force (the example's
    # history and targets left out), in the E-step's loss and in the M-step's score
    # collection, so that the paths follow what the reranker ranks highest; 0 = the paper
    distill: int = 0


@dataclass
class BlendConfig:
    """Blended final scoring (``blend.py``), fitted after training: DR's candidates are ranked
    by the reranker's score + w * log(max(s, 0) / |history| + eps), s the score of ``scorer``
    (an item-item baseline fitted on the training rows). w and eps are picked on the
    validation users (recall@train.val_k of DR at beam.B, the beam it serves at); w = 0 is the
    reranker alone. `dr blend` refits it on a trained model."""

    scorer: str = ""  # "" = off; a baseline as `dr evaluate` names it, e.g. "rp3beta:alpha=0.5,beta=0.3"
    weights: tuple[float, ...] = (0.0, 0.25, 1.0, 4.0, 16.0, 64.0)  # the w tried (0: no blend)
    eps: tuple[float, ...] = (0.01, 0.1)  # the eps tried
    exclude_history: bool = False  # pick w with history items excluded (as a given-split set is scored)


@dataclass
class Config:
    structure: StructureConfig = field(default_factory=StructureConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    em: EMConfig = field(default_factory=EMConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> Config:
        return _build(cls, d, where)

    @classmethod
    def from_toml(cls, path) -> Config:
        return cls.from_dict(read_toml(path, "config file"), str(path))

    @classmethod
    def builtin(cls, name: str) -> Config:
        """A config that ships with the package (``configs/<name>.toml``)."""
        f = resources.files("deep_retrieval") / "configs" / f"{name}.toml"
        if not f.is_file():
            raise DRError(f"no built-in config named {name!r}; see `dr configs`")
        return cls.from_dict(tomllib.loads(f.read_text(encoding="utf-8")), f"built-in {name}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        d = self.to_dict()
        for table in d.values():
            for k, v in table.items():
                if isinstance(v, tuple):
                    table[k] = list(v)
        import tomli_w  # only here: reading and training need no TOML writer

        return tomli_w.dumps(d)

    def validate(self) -> Config:
        s, e = self.structure, self.encoder
        checks = [
            (s.K >= 2, "structure.K must be >= 2"),
            (s.D >= 1, "structure.D must be >= 1"),
            (1 <= s.J <= s.K**s.D, "structure.J must be in [1, K^D]"),
            (all(h > 0 for h in s.hidden), "structure.hidden sizes must be positive"),
            (e.e > 0 and e.item_dim > 0, "encoder sizes must be positive"),
            (e.max_seq_len >= 1, "encoder.max_seq_len must be >= 1"),
            (self.reranker.negatives >= 1, "reranker.negatives must be >= 1"),
            (self.reranker.temperature > 0, "reranker.temperature must be > 0"),
            (0 <= e.dropout < 1, "encoder.dropout must be in [0, 1)"),
            (e.blocks >= 1 and e.heads >= 1, "encoder.blocks and encoder.heads must be >= 1"),
            (e.kind != "sasrec" or e.item_dim % e.heads == 0, "encoder.heads must divide encoder.item_dim"),
            (self.em.S >= 1, "em.S must be >= 1"),
            (self.em.alpha >= 0, "em.alpha must be >= 0"),
            (self.em.penalty_power > 1, "em.penalty_power must be > 1 (f convex)"),
            (0 <= self.em.eta <= 1, "em.eta must be in [0, 1]"),
            (self.em.T >= 1, "em.T must be >= 1"),
            (self.em.mstep_every >= 0, "em.mstep_every must be >= 0"),
            (self.beam.B >= 1, "beam.B must be >= 1"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.patience >= 0, "train.patience must be >= 0"),
            (self.train.val_k >= 1, "train.val_k must be >= 1"),
            (self.train.val_B >= 0, "train.val_B must be >= 0 (0: beam.B)"),
            (self.train.lr > 0, "train.lr must be > 0"),
            (self.train.epochs_joint >= 0 and self.train.epochs_dr >= 0, "epochs must be >= 0"),
            (self.train.distill >= 0, "train.distill must be >= 0"),
            (self.train.epochs_joint + self.train.epochs_dr > 0,
             "train.epochs_joint = train.epochs_dr = 0: nothing would be trained"),
            (self.train.threads >= 0,
             f"train.threads must be >= 0 (0: torch's default), got {self.train.threads}"),
            (len(self.blend.weights) > 0 and all(math.isfinite(w) and w >= 0 for w in self.blend.weights),
             f"blend.weights must be a non-empty list of finite numbers >= 0, got {list(self.blend.weights)}"
             ),
            (len(self.blend.eps) > 0 and all(math.isfinite(x) and x > 0 for x in self.blend.eps),
             f"blend.eps must be a non-empty list of finite numbers > 0, got {list(self.blend.eps)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DRError(f"invalid config: {msg}")
        if self.blend.scorer:
            from .evaluate import baseline  # the spec's name and parameters, checked now

            try:
                baseline(self.blend.scorer)  # every baseline can score a candidate subset
            except DRError as e:
                raise DRError(f"invalid config: blend.scorer: {e}") from None
        return self


def read_toml(path, what: str) -> dict:
    """The table of a TOML file; a missing or malformed file is one DRError naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise DRError(f"{what} {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DRError(f"{what} {path} is not valid TOML: {e}") from None


def _check_type(value, tp, where: str):
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise DRError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise DRError(f"{where}: expected a list, got {type(value).__name__}")
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(_check_type(v, inner, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise AssertionError("unions are not used in configs")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise DRError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, d, where: str):
    if not isinstance(d, dict):
        raise DRError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise DRError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for k, v in d.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, f"{where} [{k}]")
        else:
            kwargs[k] = _check_type(v, tp, f"{where} {k}")
    obj = cls(**kwargs)
    return obj.validate() if isinstance(obj, Config) else obj


def load_config(config: str | None, overrides=()) -> Config:
    """A TOML file, a built-in config name or (None) the defaults, then ``TABLE.KEY=VALUE`` overrides.

    An override's value is read as TOML (``3e-2``, ``true``, ``[256, 128]``), else as a bare string.
    """
    if config is None:
        cfg = Config()
    elif Path(config).suffix == ".toml" or Path(config).is_file():
        cfg = Config.from_toml(config)
    else:
        cfg = Config.builtin(config)
    return with_overrides(cfg, overrides)


def with_overrides(cfg: Config, overrides=(), tables=None) -> Config:
    """A copy of ``cfg`` with ``TABLE.KEY=VALUE`` overrides applied (``cfg`` when there are none),
    validated; ``tables``: the only tables that may be set (None: any)."""
    if not overrides:
        return cfg
    d = cfg.to_dict()
    for ov in overrides:
        key, eq, value = ov.partition("=")
        table, dot, name = key.partition(".")
        if not eq or not dot:
            raise DRError(f"--set expects TABLE.KEY=VALUE, got {ov!r}")
        if table not in d:
            raise DRError(f"--set: unknown table {table!r}; known: {sorted(d)}")
        if tables is not None and table not in tables:
            raise DRError(f"--set {key}: only {', '.join(f'{t}.*' for t in tables)} may be set here")
        try:
            d[table][name] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            d[table][name] = value  # a bare string
    return Config.from_dict(d, "config with --set")
