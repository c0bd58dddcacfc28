"""Synthetic interactions with planted, known structure, deterministic by seed.

The generative story (every draw comes from one ``numpy.random.default_rng(seed)``):

- **Clusters.** ``n_clusters`` latent clusters (default ``clip(n_items // 50, 2, 1000)``:
  about 50 primary items per cluster, capped at 1,000 so that every cluster is seen by
  enough users to be learnable at 300k users). Every item has a primary cluster
  (balanced: cluster sizes differ by at most one) and, with probability
  ``multi_cluster_prob`` each, further distinct clusters up to ``max_clusters_per_item``
  (an item can be multi-faceted, like chocolate in "food" and "gift").
- **Popularity.** Each item has a latent quality; inside every cluster its members are
  ranked by quality and drawn with Zipf probability ``(rank + 1) ** -item_zipf``, so an
  item popular in one of its clusters is popular in all of them. Clusters themselves
  have Zipf popularity ``(rank + 1) ** -cluster_zipf`` over a random cluster order.
- **Users.** A user holds ``user_clusters`` interest slots (clusters drawn by cluster
  popularity; redrawn until distinct within the user when ``distinct_user_clusters``)
  with Dirichlet(``user_alpha``) weights: a sparse mixture.
- **Drift.** Each slot is, with probability ``drift``, replaced by a fresh cluster (drawn
  by cluster popularity) by the end of the sequence: at relative position t in [0, 1] an
  interaction of that slot comes from the new cluster with probability t, so interests
  shift gradually along the sequence.
- **Noise.** With probability ``noise`` an interaction ignores the user and draws its
  cluster by global cluster popularity.
- **Lengths.** ``min_len + floor(c * lognormal(0, length_sigma))`` with c chosen so the
  lengths sum to ``n_interactions`` (heavy-tailed, at least ``min_len``, at most
  ``n_items``).
- **No repeats.** A user interacts with an item at most once (like the public rating
  data sets): a user draws ``ceil(1.5 L) + 8`` candidates, duplicates are dropped, the
  first L distinct ones are kept. Rows still short draw up to 3 more rounds at the end of
  their sequence (t = 1); a user who still has fewer than L keeps fewer (never fewer than
  ``min_len``: such a rare row is topped up with uniformly random items). So the actual
  count can fall slightly below ``n_interactions`` (about 3% on the demo preset, 0.01% at
  Amazon-Books size); the manifest's ``counts`` record it.

Then the paper's user-split protocol (SPEC 6): ``val_users`` and ``test_users`` random
users get history = first ``floor(n / 2)`` of their time-ordered sequence and ground
truth = the rest; every other user is a training row. Item and user ids are dense
(``item_ids = arange(n_items)``, ``user_ids = arange(n_users)``).

``synth(out, cfg)`` writes the Dataset directory plus ``planted.npz`` (the truth of the
story: item clusters, cluster popularity, user interests), all in one atomic directory.

Presets: ``demo``, the default, ``large`` (popularity-dominated: a few hundred clusters
of thousands of items) and ``personal`` (many small communities of ~40 items, each user
drawn to 6 of them, mild skew; made so that the ideal top-200 lists differ between
users). Two measures go with them: ``planted_top`` (each user's ideal top-k by the
planted affinity) and ``top_list_spread`` (how personal a set of top-k lists is).

On data generated from item clusters, item-item co-occurrence is close to the generating
model and Item-CF is hard to beat; ``data/latent.py`` generates the opposite case (users
and items as low-rank factors), which ``dr demo`` uses.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..artifacts import atomic_dir, atomic_write_bytes
from ..errors import DRError
from .dataset import Dataset, Ragged, Split, unique_sorted

_USER_CHUNK = 1 << 15  # users generated per vectorised chunk (fixed: part of determinism)
_OVERSAMPLE = 1.5  # candidates drawn per wanted interaction, before dropping repeats
_EXTRA_ROUNDS = 3  # further draws for rows that lost too many candidates to repeats


@dataclass
class SynthConfig:
    """Sizes and knobs of the generator (the module docstring tells the story)."""

    n_items: int = 100_000
    n_users: int = 20_000
    n_interactions: int = 1_000_000  # target total; repeats dropped, see the module doc
    n_clusters: int = 0  # 0 = auto: clip(n_items // 50, 2, 1000)
    max_clusters_per_item: int = 3  # width of Planted.item_clusters
    multi_cluster_prob: float = 0.3  # chance of each further cluster of an item
    item_zipf: float = 0.8  # popularity exponent of items inside a cluster
    cluster_zipf: float = 0.8  # popularity exponent across clusters
    user_clusters: int = 3  # interest slots per user
    user_alpha: float = 0.5  # Dirichlet concentration of a user's slot weights
    drift: float = 0.5  # chance a slot moves to a new cluster by the end of the sequence
    noise: float = 0.1  # chance an interaction ignores the user's interests
    min_len: int = 10  # shortest sequence (the user-split protocol needs >= 10)
    length_sigma: float = 1.0  # lognormal sigma of the sequence lengths above min_len
    val_users: int = 1000
    test_users: int = 1000
    distinct_user_clusters: bool = False  # a user's slots are distinct clusters
    seed: int = 0

    @classmethod
    def demo(cls, seed: int = 0) -> SynthConfig:
        """Small set that trains in minutes on 2 cores (5k items, 3k users, 150k interactions)."""
        return cls(
            n_items=5_000,
            n_users=3_000,
            n_interactions=150_000,
            val_users=300,
            test_users=300,
            seed=seed,
        )

    @classmethod
    def large(cls, seed: int = 0) -> SynthConfig:
        """Amazon-Books-sized set: 1.5M items, 300k users, 10M interactions."""
        return cls(n_items=1_500_000, n_users=300_000, n_interactions=10_000_000, seed=seed)

    @classmethod
    def personal(
        cls, n_items: int = 100_000, seed: int = 0, community_size: int = 40, zipf: float = 0.5
    ) -> SynthConfig:
        """Many small communities, users drawn to a few: personal top-200 lists.

        ``n_items // community_size`` communities (balanced sizes, one per item), Zipf
        ``zipf`` popularity inside and across communities, ``n_items // 5`` users (at least
        2,000) with 50 interactions on average, each holding 6 distinct communities with
        even-ish weights (Dirichlet 2), no drift, 5% noise; val/test users 10% each (at most
        1,000). 1.5M items: 300k users, 15M interactions; 10^7: 2M users, 10^8 interactions.
        """
        n_users = max(n_items // 5, 2_000)
        n_eval = min(1_000, n_users // 10)
        return cls(
            n_items=n_items,
            n_users=n_users,
            n_interactions=50 * n_users,
            n_clusters=max(n_items // max(community_size, 1), 1),
            max_clusters_per_item=1,
            multi_cluster_prob=0.0,
            item_zipf=zipf,
            cluster_zipf=zipf,
            user_clusters=6,
            user_alpha=2.0,
            distinct_user_clusters=True,
            drift=0.0,
            noise=0.05,
            val_users=n_eval,
            test_users=n_eval,
            seed=seed,
        )

    def resolved(self) -> SynthConfig:
        """A copy with ``n_clusters`` filled in (auto -> its value); validates first."""
        self.validate()
        if self.n_clusters:
            return replace(self)
        return replace(self, n_clusters=int(np.clip(self.n_items // 50, 2, 1000)))

    def validate(self) -> None:
        """Raise DRError naming the first impossible setting."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise DRError(f"synth config: {msg}")

        need(self.n_items >= 1, f"n_items must be >= 1, got {self.n_items}")
        need(self.min_len >= 2, f"min_len must be >= 2, got {self.min_len}")
        need(self.n_items >= self.min_len, f"n_items must be >= min_len ({self.min_len})")
        need(self.n_users >= 1, f"n_users must be >= 1, got {self.n_users}")
        need(self.val_users >= 0 and self.test_users >= 0, "val_users/test_users must be >= 0")
        n_eval = self.val_users + self.test_users
        need(
            n_eval < self.n_users,
            f"val_users + test_users ({n_eval}) must be fewer than n_users ({self.n_users})",
        )
        need(
            self.n_interactions >= self.n_users * self.min_len,
            f"n_interactions ({self.n_interactions}) must be >= n_users * min_len "
            f"({self.n_users * self.min_len})",
        )
        need(
            0 <= self.n_clusters <= self.n_items,
            f"n_clusters must be in [0, n_items] (0 = auto), got {self.n_clusters}",
        )
        need(self.max_clusters_per_item >= 1, "max_clusters_per_item must be >= 1")
        need(self.user_clusters >= 1, "user_clusters must be >= 1")
        n_clusters = self.n_clusters or int(np.clip(self.n_items // 50, 2, 1000))
        need(
            not self.distinct_user_clusters or self.user_clusters <= n_clusters,
            f"distinct_user_clusters needs user_clusters ({self.user_clusters}) <= n_clusters "
            f"({n_clusters})",
        )
        for name in ("multi_cluster_prob", "drift", "noise"):
            v = getattr(self, name)
            need(0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v}")
        for name in ("item_zipf", "cluster_zipf", "length_sigma"):
            v = getattr(self, name)
            need(v >= 0.0 and math.isfinite(v), f"{name} must be finite and >= 0, got {v}")
        need(self.user_alpha > 0.0 and math.isfinite(self.user_alpha), "user_alpha must be > 0")


@dataclass
class Planted:
    """The known structure behind a synthetic data set."""

    item_clusters: np.ndarray  # (V, max_clusters_per_item) int32, primary first, -1 padded
    n_clusters: int
    cluster_prob: np.ndarray  # (C,) float64, global cluster popularity (sums to 1)
    user_start: np.ndarray  # (U, S) int32, interest clusters at the start of the sequence
    user_end: np.ndarray  # (U, S) int32, the same slots at the end (drifted ones differ)
    user_weights: np.ndarray  # (U, S) float32, slot weights (rows sum to 1)
    item_prob: np.ndarray | None = None  # (V, W) float64, p(item | its cluster in that column)

    def save(self, path) -> None:
        """Write ``planted.npz`` (``path`` is the file or its directory), atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / "planted.npz"
        buf = io.BytesIO()
        np.savez(
            buf,
            item_clusters=self.item_clusters,
            n_clusters=np.int64(self.n_clusters),
            cluster_prob=self.cluster_prob,
            user_start=self.user_start,
            user_end=self.user_end,
            user_weights=self.user_weights,
            **({} if self.item_prob is None else {"item_prob": self.item_prob}),
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> Planted:
        """Read ``planted.npz`` from a synthetic data set directory (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / "planted.npz"
        if not path.is_file():
            raise DRError(f"planted structure {path} not found (not a synthetic data set?)")
        try:
            with np.load(path, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
            return cls(
                item_clusters=a["item_clusters"],
                n_clusters=int(a["n_clusters"]),
                cluster_prob=a["cluster_prob"],
                user_start=a["user_start"],
                user_end=a["user_end"],
                user_weights=a["user_weights"],
                item_prob=a.get("item_prob"),  # absent in files written before it existed
            )
        except KeyError as e:
            raise DRError(f"planted structure {path} lacks array {e}") from None
        except Exception as e:  # zipfile / value errors from a corrupt file
            raise DRError(f"planted structure {path} is corrupt ({e})") from None


# ------------------------------------------------------------------------- generation
def generate(cfg: SynthConfig) -> tuple[Dataset, Planted]:
    """Generate the data set and its planted structure (see the module docstring)."""
    cfg = cfg.resolved()
    rng = np.random.default_rng(cfg.seed)
    V, U, C = cfg.n_items, cfg.n_users, cfg.n_clusters

    item_clusters = _item_clusters(rng, cfg)  # (V, W)
    cluster_prob = _zipf(C, cfg.cluster_zipf)[rng.permutation(C)]  # (C,)
    cluster_cdf = _cdf(cluster_prob)
    members, keys, item_prob = _cluster_index(rng, item_clusters, C, cfg.item_zipf)

    # users: interest slots, their drifted replacements, Dirichlet weights
    S = cfg.user_clusters
    start = _draw(rng, cluster_cdf, (U, S)).astype(np.int32)  # (U, S)
    if cfg.distinct_user_clusters:
        _make_distinct(rng, cluster_cdf, start, np.ones((U, S), dtype=bool))
    moved = rng.random((U, S)) < cfg.drift
    end = np.where(moved, _draw(rng, cluster_cdf, (U, S)), start).astype(np.int32)
    if cfg.distinct_user_clusters:
        _make_distinct(rng, cluster_cdf, end, moved)
    g = rng.standard_gamma(cfg.user_alpha, (U, S))  # (U, S)
    g[:, 0] += g.sum(axis=1) == 0  # underflow guard for tiny alpha
    weights = (g / g.sum(axis=1, keepdims=True)).astype(np.float32)
    slot_cdf = np.cumsum(weights, axis=1)[:, :-1]  # (U, S-1)

    want = _lengths(rng, cfg)  # (U,) int64

    values, lengths = [], []
    for u0 in range(0, U, _USER_CHUNK):
        u = slice(u0, min(u0 + _USER_CHUNK, U))
        users = (want[u], slot_cdf[u], start[u], end[u], moved[u])
        v, n = _chunk(rng, cfg, users, cluster_cdf, members, keys)
        values.append(v)
        lengths.append(n)
    seqs = Ragged.from_lengths(np.concatenate(values), np.concatenate(lengths))
    del values

    ds = _user_split(rng, seqs, cfg)
    n_seen = int((np.bincount(seqs.values, minlength=V) > 0).sum())
    ds.manifest = {
        "source": "synthetic",
        "protocol": "user-split",
        "order": "generated time order",
        "synth": asdict(cfg),
        "counts": {
            "interactions": int(len(seqs.values)),
            "interactions_target": cfg.n_interactions,
            "items_with_interactions": n_seen,
            "mean_seq_len": float(len(seqs.values) / U),
        },
    }
    planted = Planted(item_clusters, C, cluster_prob, start, end, weights, item_prob)
    return ds, planted


def synth(out, cfg: SynthConfig, log=print) -> Dataset:
    """Generate and write the data set directory ``out`` (Dataset + planted.npz), atomically."""
    t0 = time.perf_counter()
    ds, planted = generate(cfg)
    return write_synthetic(out, ds, planted, f"{planted.n_clusters:,} clusters", t0, log)


def write_synthetic(out, ds: Dataset, truth, what: str, t0: float, log=print) -> Dataset:
    """Log a generated set's sizes, then write ``out`` atomically: the Dataset and ``truth``
    (``Planted`` or ``LatentTruth``; its ``save`` names its own file in the directory)."""
    c = ds.manifest["counts"]
    log(
        f"synth: {ds.n_items:,} items, {ds.n_users:,} users, {c['interactions']:,} interactions "
        f"(mean length {c['mean_seq_len']:.1f}), {what}, generated in {time.perf_counter() - t0:.1f}s"
    )
    with atomic_dir(out, "synth") as tmp:
        ds.save(tmp)  # its own atomic write inside ours
        truth.save(tmp)
    log(f"synth: wrote {out} in {time.perf_counter() - t0:.1f}s")
    return ds


# ---------------------------------------------------------------------------- helpers
def _zipf(n: int, s: float) -> np.ndarray:
    """(n,) float64 probabilities proportional to (rank + 1) ** -s."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    return w / w.sum()


def _cdf(p: np.ndarray) -> np.ndarray:
    c = np.cumsum(p)
    c[-1] = 1.0
    return c


def _draw(rng: np.random.Generator, cdf: np.ndarray, shape) -> np.ndarray:
    """Inverse-CDF draws of indices into ``cdf``."""
    idx = np.searchsorted(cdf, rng.random(shape), side="right")
    return np.minimum(idx, len(cdf) - 1)


def _item_clusters(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """(V, W) int32: balanced primary cluster in column 0, distinct extras, -1 padding."""
    V, C, W = cfg.n_items, cfg.n_clusters, cfg.max_clusters_per_item
    out = np.full((V, W), -1, dtype=np.int32)
    out[:, 0] = rng.permutation(np.arange(V) % C)  # every cluster non-empty
    # number of clusters: 1 + consecutive successes of multi_cluster_prob, capped
    extra = (rng.random((V, W - 1)) < cfg.multi_cluster_prob).cumprod(axis=1).sum(axis=1)
    n = np.minimum(1 + extra, min(W, C))  # (V,)
    for j in range(1, W):
        rows = np.flatnonzero(n > j)
        col = np.full(len(rows), -1, dtype=np.int32)
        todo = np.arange(len(rows))
        while len(todo):  # redraw collisions with the item's earlier clusters
            col[todo] = rng.integers(0, C, len(todo))
            clash = (out[rows[todo], :j] == col[todo, None]).any(axis=1)
            todo = todo[clash]
        out[rows, j] = col
    return out


def _make_distinct(rng: np.random.Generator, cdf: np.ndarray, a: np.ndarray, redraw: np.ndarray) -> None:
    """Redraw entries of ``a`` (U, S) where ``redraw`` until each row's entries are distinct.

    Only entries with ``redraw`` set change (columns left to right); the others stay.
    """
    for j in range(a.shape[1]):
        others = np.delete(a, j, axis=1)  # (U, S-1)
        todo = np.flatnonzero(redraw[:, j] & (others == a[:, j : j + 1]).any(axis=1))
        while len(todo):
            a[todo, j] = _draw(rng, cdf, len(todo))
            todo = todo[(others[todo] == a[todo, j : j + 1]).any(axis=1)]


def _cluster_index(
    rng: np.random.Generator, item_clusters: np.ndarray, C: int, s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR cluster -> members by quality, search keys for inverse-CDF sampling, member masses.

    Returns ``members`` (M,) int32 items and ``keys`` (M,) float64 with
    ``keys[j] = c + (Zipf mass of cluster c's members up to and including j)``, so that
    ``searchsorted(keys, c + u, side="right")`` draws a member of c for u ~ U[0, 1); and
    ``item_prob`` (V, W) float64: p(item | cluster ``item_clusters[v, j]``), 0 on padding.
    """
    V, W = item_clusters.shape
    quality = rng.random(V)
    item = np.repeat(np.arange(V, dtype=np.int32), W)  # (V*W,)
    clus = item_clusters.reshape(-1)
    ok = clus >= 0
    item, clus = item[ok], clus[ok].astype(np.int64)  # (M,)
    order = np.lexsort((-quality[item], clus))  # by cluster, best quality first
    item, clus = item[order], clus[order]
    flat = np.flatnonzero(ok)[order]  # (M,) position of each entry in item_clusters
    ptr = np.zeros(C + 1, dtype=np.int64)
    np.cumsum(np.bincount(clus, minlength=C), out=ptr[1:])
    rank = np.arange(len(item), dtype=np.int64) - ptr[clus]  # (M,)
    cum = np.cumsum((rank + 1.0) ** -s)  # (M,) global running mass
    before = np.concatenate([[0.0], cum])[ptr[:-1]]  # (C,) mass before each cluster
    total = cum[ptr[1:] - 1] - before  # (C,) every cluster is non-empty
    keys = clus + (cum - before[clus]) / total[clus]
    keys[ptr[1:] - 1] = np.arange(1, C + 1)  # last member of c: exactly c + 1
    prob = np.zeros(V * W)
    prob[flat] = (rank + 1.0) ** -s / total[clus]
    return item, keys, prob.reshape(V, W)


def _lengths(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """(U,) int64 wanted lengths: min_len + heavy tail, summing to n_interactions (capped)."""
    U, lo = cfg.n_users, cfg.min_len
    extra_total = cfg.n_interactions - U * lo
    x = rng.lognormal(0.0, cfg.length_sigma, U)
    n = lo + np.floor(x * (extra_total / x.sum())).astype(np.int64)
    short = extra_total - int((n - lo).sum())  # 0 <= short < U
    n[rng.choice(U, size=short, replace=False)] += 1
    return np.minimum(n, cfg.n_items)


def _chunk(rng, cfg, users, cluster_cdf, members, keys):
    """Sequences of one chunk of users: (values int32 in time order, lengths int64).

    ``users`` = (want, slot_cdf, start, end, moved) of the chunk's users (see ``generate``).
    """
    want, slot_cdf, start, end, moved = users
    Uc = len(want)

    def sample(user: np.ndarray, t: np.ndarray) -> np.ndarray:
        """(n,) int32 items for users ``user`` (chunk-local) at relative times ``t``."""
        slot = (rng.random(len(user))[:, None] > slot_cdf[user]).sum(axis=1)  # (n,)
        drifted = moved[user, slot] & (rng.random(len(user)) < t)
        clus = np.where(drifted, end[user, slot], start[user, slot]).astype(np.int64)
        noisy = np.flatnonzero(rng.random(len(user)) < cfg.noise)
        clus[noisy] = _draw(rng, cluster_cdf, len(noisy))
        j = np.searchsorted(keys, clus + rng.random(len(user)), side="right")
        return members[np.minimum(j, len(members) - 1)]

    def append(user, item, add_user, add_item):
        """Append draws at the end of their users' rows, then drop repeats and overflow."""
        order = np.argsort(np.concatenate([user, add_user]), kind="stable")
        user = np.concatenate([user, add_user])[order]
        item = np.concatenate([item, add_item])[order]
        return _distinct_prefix(user, item, want, cfg.n_items)

    m = np.ceil(want * _OVERSAMPLE).astype(np.int64) + 8  # (Uc,) candidates per user
    user = np.repeat(np.arange(Uc, dtype=np.int32), m)  # (n,)
    first = np.zeros(Uc, dtype=np.int64)
    np.cumsum(m[:-1], out=first[1:])
    pos = np.arange(len(user), dtype=np.int64) - first[user]  # (n,) position in the sequence
    t = np.minimum(pos / np.maximum(want[user] - 1, 1), 1.0)  # (n,) relative time
    user, item = _distinct_prefix(user, sample(user, t), want, cfg.n_items)

    for _ in range(_EXTRA_ROUNDS):  # rows that met repeats: more draws at the end (t = 1)
        missing = want - np.bincount(user, minlength=Uc)  # (Uc,)
        if not missing.any():
            break
        add_user = np.repeat(np.arange(Uc, dtype=np.int32), 2 * missing + 8 * (missing > 0))
        user, item = append(user, item, add_user, sample(add_user, np.ones(len(add_user))))

    for _ in range(1000):  # top up the rare rows still below min_len with uniform items
        lengths = np.bincount(user, minlength=Uc)
        short = np.flatnonzero(lengths < cfg.min_len)
        if not len(short):
            return item, lengths.astype(np.int64)
        add_user = np.repeat(short.astype(np.int32), 2 * cfg.min_len)
        add_item = rng.integers(0, cfg.n_items, len(add_user), dtype=np.int32)
        user, item = append(user, item, add_user, add_item)
    raise DRError("synth: could not fill sequences to min_len (too few items?)")


def _distinct_prefix(user, item, want, V):
    """Drop repeated (user, item) pairs, then keep each user's first ``want[user]``.

    ``user`` is sorted (rows contiguous, time order inside a row); returns the kept
    ``(user, item)`` in the same order.
    """
    key = user.astype(np.int64) * V + item  # (n,)
    order = np.argsort(key, kind="stable")
    sk = key[order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = sk[1:] != sk[:-1]
    keep = np.zeros(len(key), dtype=bool)
    keep[order[new]] = True  # the first (earliest) occurrence of each pair
    user, item = user[keep], item[keep]
    first = np.searchsorted(user, user, side="left")  # start of each value's row
    rank = np.arange(len(user)) - first
    ok = rank < want[user]
    return user[ok], item[ok]


def _user_split(rng: np.random.Generator, seqs: Ragged, cfg: SynthConfig) -> Dataset:
    """The paper's user split: eval users' first floor(n/2) = history, rest = truth."""
    U = len(seqs)
    pick = rng.permutation(U)[: cfg.val_users + cfg.test_users]
    val_users = np.sort(pick[: cfg.val_users])
    test_users = np.sort(pick[cfg.val_users :])
    is_eval = np.zeros(U, dtype=bool)
    is_eval[pick] = True
    train_users = np.flatnonzero(~is_eval)

    def split(users: np.ndarray) -> Split:
        r = seqs.take(users)
        n = r.lengths  # (u,)
        h = n // 2
        in_hist = r.positions() < np.repeat(h, n)
        hist = Ragged.from_lengths(r.values[in_hist], h)
        truth = Ragged.from_lengths(r.values[~in_hist], n - h)
        return Split(users.astype(np.int64), hist, truth)

    return Dataset(
        item_ids=np.arange(cfg.n_items, dtype=np.int64),
        user_ids=np.arange(U, dtype=np.int64),
        train=seqs.take(train_users),
        train_users=train_users.astype(np.int64),
        val=split(val_users),
        test=split(test_users),
    )


# ----------------------------------------------------------------------------- purity
def cluster_purity(groups: Ragged, item_clusters: np.ndarray) -> float:
    """Size-weighted mean, over non-empty groups, of the share of the group's most common cluster.

    For each group (e.g. the items of one path) count, per cluster, the group's items that
    belong to it (an item counts for every cluster it belongs to); the group's purity is
    the largest count over the group size. Weighting by size, the result is
    ``sum(max count) / sum(size)`` over non-empty groups; 0.0 when all groups are empty.
    """
    item_clusters = np.asarray(item_clusters)
    if item_clusters.ndim == 1:
        item_clusters = item_clusters[:, None]
    total = len(groups.values)
    if total == 0:
        return 0.0
    W = item_clusters.shape[1]
    C = int(item_clusters.max(initial=-1)) + 1
    g = np.repeat(groups.row_ids(), W)  # (total*W,)
    c = item_clusters[groups.values].reshape(-1).astype(np.int64)
    ok = c >= 0
    key = np.unique(g[ok] * max(C, 1) + c[ok], return_counts=True)  # (group, cluster) pairs
    pair_group, counts = key[0] // max(C, 1), key[1]
    best = np.zeros(len(groups), dtype=np.int64)
    np.maximum.at(best, pair_group, counts)
    return float(best.sum() / total)


# ------------------------------------------------------------------ personal top lists
def planted_top(
    planted: Planted, noise: float, k: int = 200, users: np.ndarray | None = None
) -> np.ndarray:
    """(n, k) int64: each user's ideal top-k items by planted affinity, -1 padded.

    The affinity of item v for user u is the probability that u's next interaction at the
    end of the sequence (t = 1, drifted slots in place) is v:
    ``(1 - noise) * sum_s w[u, s] * p(v | c_s) + noise * sum_c cluster_prob[c] * p(v | c)``
    with ``c_s = user_end[u, s]``. Only the members of the user's clusters and the k best
    items of the noise term can reach the top k, so only those are scored (exact). Ties go
    to the lower item id. ``noise`` is the config's; ``users`` defaults to all users.
    """
    if planted.item_prob is None:
        raise DRError("planted structure has no item_prob (written by an older version)")
    ic, prob = planted.item_clusters, planted.item_prob  # (V, W)
    V, W = ic.shape
    users = np.arange(len(planted.user_end)) if users is None else np.asarray(users, dtype=np.int64)
    valid = ic >= 0
    glob = (np.where(valid, planted.cluster_prob[np.maximum(ic, 0)], 0.0) * prob).sum(axis=1)  # (V,)
    glob_top = np.argsort(-glob, kind="stable")[:k]  # (k,)
    # members of every cluster, padded: (C, M)
    item = np.repeat(np.arange(V), W)[valid.reshape(-1)]
    clus = ic.reshape(-1)[valid.reshape(-1)].astype(np.int64)
    order = np.argsort(clus, kind="stable")
    item, clus = item[order], clus[order]
    sizes = np.bincount(clus, minlength=planted.n_clusters)
    M = int(sizes.max(initial=0))
    members = np.full((planted.n_clusters, M), -1, dtype=np.int64)
    members[clus, np.arange(len(clus)) - np.repeat(np.cumsum(sizes) - sizes, sizes)] = item

    slots, w = planted.user_end[users].astype(np.int64), planted.user_weights[users]  # (n, S)
    S = slots.shape[1]
    width = S * M + len(glob_top)
    out = np.full((len(users), k), -1, dtype=np.int64)
    step = max(1, (1 << 22) // width)
    for a in range(0, len(users), step):
        sl, wl = slots[a : a + step], w[a : a + step].astype(np.float64)  # (b, S)
        b = len(sl)
        glob_rows = np.broadcast_to(glob_top, (b, len(glob_top)))
        cand = np.concatenate([members[sl].reshape(b, S * M), glob_rows], axis=1)  # (b, L)
        cand = np.sort(cand, axis=1)  # (b, L) by item: repeats side by side, padding first
        c = np.maximum(cand, 0)
        aff = noise * glob[c]  # (b, L)
        for s in range(S):
            for j in range(W):
                aff += (1 - noise) * wl[:, s, None] * prob[c, j] * (ic[c, j] == sl[:, s, None])
        dup = np.zeros(cand.shape, dtype=bool)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        aff[(cand < 0) | dup] = -np.inf
        best = np.argsort(-aff, axis=1, kind="stable")[:, :k]  # ties: lower item id first
        got = np.take_along_axis(cand, best, 1)
        got[np.take_along_axis(aff, best, 1) == -np.inf] = -1
        out[a : a + b, : got.shape[1]] = got
    return out


def top_list_spread(lists: np.ndarray, item_counts: np.ndarray | None = None, top: int = 200) -> dict:
    """How personal a set of top-k lists is: distinct items, and the share in the most common.

    ``lists`` (n, k) item ids, -1 padding ignored. ``distinct``: the number of distinct
    items over all lists. ``share_in_most_common``: the share of list entries that are
    among the ``top`` most common items: by ``item_counts`` (e.g. training counts) when
    given, else by occurrences in the lists themselves (ties to the lower id). A
    popularity-dominated recommender gives every user the same list (few distinct items,
    share near 1); a personal one gives many distinct items and a low share.
    """
    v = np.asarray(lists).reshape(-1)
    v = v[v >= 0]
    if len(v) == 0:
        return {"distinct": 0, "share_in_most_common": 0.0}
    counts = np.bincount(v) if item_counts is None else np.asarray(item_counts)
    common = np.argsort(-counts, kind="stable")[:top]
    return {"distinct": len(unique_sorted(v)), "share_in_most_common": float(np.isin(v, common).mean())}
