"""Synthetic interactions from a low-rank softmax model, with the true factors kept.

The generative story (every draw comes from one ``numpy.random.default_rng(seed)``):

- **Factors.** Item factors ``q_v`` and user factors ``p_u``, each ``N(0, I / dim)``.
- **Popularity.** Item bias ``b_v = -item_zipf * log(rank_v + 1)`` over a random order of
  the items (Zipf popularity when a user's taste is ignored).
- **Affinity.** ``a(u, v) = beta * sqrt(dim) * p_u . q_v + b_v``; ``sqrt(dim) p_u . q_v``
  has unit variance, so ``beta`` is the strength of personal taste against popularity.
- **Draws.** A user of length L draws L distinct items from ``softmax(a(u, .))`` without
  replacement (the L largest of ``a(u, v) + Gumbel noise``: exact successive sampling) and
  logs them in a random order: the log has no time order to learn from.
- **Lengths.** As in ``synth``: ``min_len`` plus a lognormal tail, summing to
  ``n_interactions``.

Then the user split of ``synth`` (validation and test users: history = the first half of
their log, truth = the rest). This is the model a two-tower recommender assumes (a user
vector, an item vector, a softmax), so it is where learned embeddings should beat
item-item co-occurrence counts; ``synth``'s planted clusters are the opposite case.
Generation scores every (user, item) pair: O(users x items), meant for catalogues up to
about 10^5 items.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_bytes
from ..errors import DRError
from .dataset import Dataset, Ragged
from .synth import _lengths, _user_split, write_synthetic

_PAIRS = 1 << 22  # (user, item) scores held at once while drawing


@dataclass
class LatentConfig:
    """Sizes and knobs of the low-rank generator (the module docstring tells the story)."""

    n_items: int = 50_000  # the demo's catalogue (`dr demo`, `dr synth --preset latent`)
    n_users: int = 3_000
    n_interactions: int = 150_000
    dim: int = 16  # rank of the affinity
    beta: float = 3.0  # strength of taste against popularity
    item_zipf: float = 0.8  # popularity exponent
    min_len: int = 10
    length_sigma: float = 1.0
    val_users: int = 300
    test_users: int = 300
    seed: int = 0

    def validate(self) -> LatentConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise DRError(f"latent config: {msg}")

        need(self.min_len >= 2, f"min_len must be >= 2, got {self.min_len}")
        need(self.n_items >= self.min_len, f"n_items must be >= min_len ({self.min_len})")
        need(self.n_users >= 1, f"n_users must be >= 1, got {self.n_users}")
        need(self.val_users >= 0 and self.test_users >= 0, "val_users/test_users must be >= 0")
        need(self.val_users + self.test_users < self.n_users,
             f"val_users + test_users must be fewer than n_users ({self.n_users})")
        need(self.n_interactions >= self.n_users * self.min_len,
             f"n_interactions ({self.n_interactions}) must be >= n_users * min_len "
             f"({self.n_users * self.min_len})")
        need(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        for name in ("beta", "item_zipf", "length_sigma"):
            v = getattr(self, name)
            need(v >= 0.0 and math.isfinite(v), f"{name} must be finite and >= 0, got {v}")
        return self


@dataclass
class LatentTruth:
    """The factors behind a latent data set: the true affinity of every (user, item)."""

    user_factors: np.ndarray  # (U, dim) float32
    item_factors: np.ndarray  # (V, dim) float32
    item_bias: np.ndarray  # (V,) float32
    beta: float

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """(n, V) float64: ``a(u, v)`` for the given users (the softmax logits of the story)."""
        d = self.item_factors.shape[1]
        p = self.user_factors[np.asarray(users, dtype=np.int64)].astype(np.float64)  # (n, dim)
        return self.beta * math.sqrt(d) * (p @ self.item_factors.T.astype(np.float64)) + self.item_bias

    def top(self, users: np.ndarray, k: int) -> np.ndarray:
        """(n, k) int64: each user's k items of highest affinity, best first (ties: lower id)."""
        a = self.affinity(users)
        return np.argsort(-a, axis=1, kind="stable")[:, :k]

    def save(self, path) -> None:
        """Write ``latent.npz`` (``path`` is the file or its directory), atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / "latent.npz"
        buf = io.BytesIO()
        np.savez(buf, user_factors=self.user_factors, item_factors=self.item_factors,
                 item_bias=self.item_bias, beta=np.float64(self.beta))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> LatentTruth:
        path = Path(path)
        if path.is_dir():
            path = path / "latent.npz"
        if not path.is_file():
            raise DRError(f"latent factors {path} not found (not a latent synthetic data set?)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["user_factors"], z["item_factors"], z["item_bias"], float(z["beta"]))
        except KeyError as e:
            raise DRError(f"latent factors {path} lack array {e}") from None
        except Exception as e:  # zipfile / value errors from a corrupt file
            raise DRError(f"latent factors {path} are corrupt ({e})") from None


def generate_latent(cfg: LatentConfig) -> tuple[Dataset, LatentTruth]:
    """Generate the data set and its true factors (see the module docstring)."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    V, U, d = cfg.n_items, cfg.n_users, cfg.dim
    Q = (rng.standard_normal((V, d)) / math.sqrt(d)).astype(np.float32)  # (V, dim)
    P = (rng.standard_normal((U, d)) / math.sqrt(d)).astype(np.float32)  # (U, dim)
    bias = (-cfg.item_zipf * np.log(rng.permutation(V) + 1.0)).astype(np.float32)  # (V,)
    truth = LatentTruth(P, Q, bias, cfg.beta)
    want = _lengths(rng, cfg)  # (U,) int64, each <= V

    values = []
    step = max(1, _PAIRS // V)
    for a in range(0, U, step):
        users = np.arange(a, min(a + step, U))
        n = want[users]  # (b,)
        L = int(n.max())
        g = truth.affinity(users) + rng.gumbel(size=(len(users), V))  # (b, V)
        top = np.argpartition(-g, L - 1, axis=1)[:, :L] if L < V else np.tile(np.arange(V), (len(users), 1))
        key = np.take_along_axis(g, top, 1)  # (b, L)
        top = np.take_along_axis(top, np.argsort(-key, axis=1), 1)  # (b, L) the draws, in order
        keep = np.arange(L) < n[:, None]  # (b, L) the user's first n draws
        shuffle = np.argsort(np.where(keep, rng.random((len(users), L)), 2.0), axis=1)  # (b, L)
        values.append(np.take_along_axis(top, shuffle, 1)[keep].astype(np.int32))  # row by row
    seqs = Ragged.from_lengths(np.concatenate(values), want)

    ds = _user_split(rng, seqs, cfg)
    ds.manifest = {
        "source": "synthetic (latent factors)",
        "protocol": "user-split",
        "order": "random (no time order)",
        "latent": asdict(cfg),
        "counts": {
            "interactions": int(len(seqs.values)),
            "items_with_interactions": int((np.bincount(seqs.values, minlength=V) > 0).sum()),
            "mean_seq_len": float(len(seqs.values) / U),
        },
    }
    return ds, truth


def synth_latent(out, cfg: LatentConfig, log=print) -> Dataset:
    """Generate and write the data set directory ``out`` (Dataset + latent.npz), atomically."""
    t0 = time.perf_counter()
    ds, truth = generate_latent(cfg)
    return write_synthetic(out, ds, truth, f"latent factors of rank {cfg.dim}", t0, log)


def factor_cohesion(groups: Ragged, item_factors: np.ndarray) -> float:
    """How alike, in the true factors, the items of each group are.

    The size-weighted mean, over groups of 2 items or more, of the mean cosine similarity
    of the true factors of two distinct items of the group (e.g. the items of one path);
    0 for items placed at random, 1 when every group holds copies of one direction.
    Computed from each group's sum of unit vectors s: (|s|^2 - n) / (n (n - 1)).
    """
    unit = item_factors / np.linalg.norm(item_factors, axis=1, keepdims=True).clip(1e-12)
    n = groups.lengths
    s = np.zeros((len(groups), unit.shape[1]))
    np.add.at(s, groups.row_ids(), unit[groups.values])
    ok = n >= 2
    if not ok.any():
        return 0.0
    pair = ((s[ok] ** 2).sum(axis=1) - n[ok]) / (n[ok] * (n[ok] - 1.0))  # (groups,)
    return float((pair * n[ok]).sum() / n[ok].sum())
