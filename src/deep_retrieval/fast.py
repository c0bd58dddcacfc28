"""A numpy serving path for a trained DeepRetrieval: beam search, candidates, rerank, top-k.

``Retriever.from_model(model)`` copies what serving needs out of the torch model once:

- the structure MLPs: each layer's first Linear split into the user's columns (stacked
  over the layers, so one (n, e) x (e, D*H) product gives every layer's user share) and
  the per-node prefix tables (``StructureModel.prefix_tables``), then the rest of the MLP;
- the CSR path -> items index (``PathIndex``: sorted non-empty flat path ids, indptr, items);
- the reranker's item embedding matrix (V, e) (a view of the torch weights, no copy), and with
  ``beam.path_major`` a path-major copy of it (``slot_emb``: row t = the item at position t of
  the CSR index's ``items``, J x V rows).

``search(u_str, u_rr, k, B)`` takes precomputed user embeddings (n, e) and returns the
top-k item ids (n, k) (-1 padded), their scores (n, k) (-inf padded) and the number of
distinct candidates reranked per user (n,). It is the same algorithm as
``DeepRetrieval.recommend``: beams are ranked by CUMULATIVE log-probability exactly as in
``beam.beam_search``, the candidates are the union of the items on the B paths, reranked by
inner product. Filters act on the candidates before the rerank (so they cost O(candidates x
log filter size), never O(V)): ``drop`` removes per-user items (``exclude_history`` passes
the histories, as ``recommend(exclude_history=True)`` does), ``exclude`` removes items for
every user, ``allow`` keeps only the items it lists.

A Retriever is safe to share between threads: ``search`` writes only to arrays it
allocates, except one (V,) scratch array per thread (for the kernels and batch-1 candidates).

Small blocks of users (``search`` with n <= ``ONE_BY_ONE``: a server's request, or the few it
batches together, ``recommend`` of one history) go one user at a time through the compiled
kernels of ``single.py`` instead of the numpy code below: the same algorithm and results (up to
float rounding and the order of exactly tied scores), without numpy's per-call overhead, which
dominates small blocks. With the path-major copy every user goes through them, reading its
candidates' embeddings from consecutive rows: at 10^6 items and more a row-by-row gather from
the (V, e) table waits on memory for each candidate, and that wait is most of a query
(benchmarks/README.md).

Why numpy (not torch) for larger blocks: the work is a few (n, e) x (e, H) and (n*b, H) x
(H, K) products and top-B selections over a few thousand scores per user; torch spends more in
per-op dispatch than in arithmetic there, numpy's small matmuls and ``argpartition`` do not.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from .artifacts import atomic_dir, read_json
from .data.dataset import Ragged, as_ragged, unique_sorted
from .errors import DRError
from .recommender import pairs_in_history
from .single import beam_one, candidates_one, rerank_one
from .structure import to_flat

_NO_ITEMS = np.zeros(0, dtype=np.int64)
_NO_TERMS = np.zeros(0, dtype=np.float32)


def _add_log_softmax(x: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``base[..., None] + log_softmax(x)`` over the last axis, in place on ``x``.

    x (..., K) float32 logits; base (...) the cumulative log-probability of each row's prefix.
    """
    mx = x.max(axis=-1, keepdims=True)  # (..., 1)
    lse = np.log(np.exp(x - mx).sum(axis=-1, keepdims=True)) + mx  # (..., 1) logsumexp
    x += base[..., None] - lse
    return x


def _top_sorted(score: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row, sorted descending: (n, m) -> (n, k)."""
    n, m = score.shape
    rows = np.arange(n)[:, None]  # (n, 1); plain indexing: take_along_axis costs ~15 us a call
    if k < m:
        part = np.argpartition(score, m - k, axis=1)[:, m - k :]  # (n, k) the k largest, unordered
    else:
        part = np.broadcast_to(np.arange(m), score.shape)  # (n, m) every column
    order = np.argsort(-score[rows, part], axis=1, kind="stable")
    return part[rows, order]  # (n, k)


def _member(sorted_set: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(m,) True where x[j] is in ``sorted_set`` (sorted, distinct): a binary search per entry."""
    if len(sorted_set) == 0:
        return np.zeros(x.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)  # (m,)
    return sorted_set[pos] == x


ONE_BY_ONE = 8  # blocks of at most this many users go user by user through single.py's kernels
DENSE_FRACTION = 1 / 8  # a user with more candidates than this share of V scores every item
DENSE_BLOCK = 1 << 24  # most (users, V) scores computed at once for such users (64 MB)


class Retriever:
    """Beam search + candidate gather + inner-product rerank over numpy copies of a model."""

    def __init__(
        self,
        K: int,
        D: int,
        w_user: np.ndarray,
        b_user: np.ndarray,
        tables: list[np.ndarray],
        rest: list[list[tuple[np.ndarray, np.ndarray]]],
        path_ids: np.ndarray,
        indptr: np.ndarray,
        items: np.ndarray,
        item_emb: np.ndarray,
        path_major: bool = False,
    ):
        self.K, self.D = K, D
        # (e, D*H): columns d*H:(d+1)*H are layer d's user share
        self.w_user = np.ascontiguousarray(w_user, dtype=np.float32)
        self.b_user = np.ascontiguousarray(b_user, dtype=np.float32)  # (D*H,) the first Linears' biases
        self.tables = tables  # D x (d*K, H): row i*K + c = node c of layer i's share in layer d
        self.rest = rest  # D x [(W^T (in, out), b (out,)), ...]: ReLU before each, last out = K
        self.path_ids = path_ids  # (P,) int64 sorted non-empty flat path ids
        self.indptr = indptr  # (P+1,) int64
        self.items = items  # (nnz,) int64 items of path p: items[indptr[p]:indptr[p+1]]
        self.item_emb = item_emb  # (V, e) float32 reranker output embeddings
        # (nnz, e) item_emb[items]: row t is the item at slot t of the path index (path-major),
        # or None; with it one user's candidates are read path by path from consecutive rows
        self.slot_emb = np.asarray(item_emb)[items] if path_major else None
        self._local = threading.local()  # .stamp, .mark: (V,) per-thread scratch arrays
        self.H = b_user.shape[0] // D
        self._tables_stacked, self._mlp = self._kernel_arrays()  # as single.py's kernels take them
        # users of blocks of <= ONE_BY_ONE (of every block when path-major) go one by one through
        # single.py's kernels; False: every block through the numpy path (to compare the two)
        self.use_kernels = True

    def __getstate__(self) -> dict:  # copy / pickle: the per-thread scratch stays behind
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @classmethod
    def from_model(cls, model) -> Retriever:
        """Copy a trained ``DeepRetrieval``'s serving state (call again after retraining)."""
        model._check_fitted()
        rr = model.net.reranker
        if rr.cfg.similarity == "cosine":  # unit rows: the inner product is the reranker's score
            item_emb = rr.item_embeddings()  # (V, e) a normalised copy
        else:
            item_emb = rr.item_emb.weight.detach().cpu().numpy()  # (V, e) a view, no copy
        return cls.from_parts(model.net.structure, model._index, item_emb,
                              path_major=model.config.beam.path_major)

    @classmethod
    def from_parts(cls, structure, index, item_emb: np.ndarray, path_major: bool = False) -> Retriever:
        """From a ``StructureModel``, a ``PathIndex`` and the reranker's item embeddings (V, e);
        ``path_major`` adds the path-major copy of the embeddings (``beam.path_major``)."""
        import torch

        st, e = structure, structure.e
        with torch.no_grad():
            tables = [t.numpy().astype(np.float32, copy=True) for t in st.prefix_tables()]
            w_user = np.concatenate([f.weight[:, :e].numpy().T for f in st.first], axis=1)
            b_user = np.concatenate([f.bias.numpy() for f in st.first])
            rest = [
                [(lin.weight.numpy().T.copy(), lin.bias.numpy().copy())
                 for lin in seq if isinstance(lin, torch.nn.Linear)]
                for seq in st.rest
            ]
        return cls(st.K, st.D, w_user, b_user, tables, rest, index.path_ids, index.indptr, index.items,
                   np.asarray(item_emb, dtype=np.float32), path_major)  # __init__ makes w, b float32

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the serving arrays as .npy files (no pickle) plus meta.json, atomically.

        A server then needs only ``Retriever.load`` (no torch model, no M-step table). A
        model's blend is not among the arrays: pass its term to ``search`` as ``extra``.
        """
        arrays = self._arrays()
        with atomic_dir(path, "retriever") as tmp:
            for name, a in arrays.items():
                np.save(tmp / f"{name}.npy", a, allow_pickle=False)
            meta = {"format_version": 1, "K": self.K, "D": self.D, "layers": [len(r) for r in self.rest],
                    "path_major": self.slot_emb is not None}
            (tmp / "meta.json").write_text(json.dumps(meta) + "\n")

    @classmethod
    def load(cls, path, mmap: bool = False) -> Retriever:
        """Read what ``save`` wrote; ``mmap=True`` maps the item embeddings instead of reading them."""
        path = Path(path)
        meta = read_json(path / "meta.json", "retriever meta")
        if meta.get("format_version") != 1:
            raise DRError(f"retriever {path}: unknown format_version {meta.get('format_version')!r}")

        def arr(name: str, mode=None) -> np.ndarray:
            try:
                return np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False)
            except (FileNotFoundError, ValueError) as e:
                raise DRError(f"retriever {path}: {name}.npy missing or unreadable ({e})") from None

        K, D = int(meta["K"]), int(meta["D"])
        tables = [arr(f"table{d}") for d in range(D)]
        rest = [[(arr(f"rest{d}_{j}_w"), arr(f"rest{d}_{j}_b")) for j in range(n)]
                for d, n in enumerate(meta["layers"])]
        return cls(K, D, arr("w_user"), arr("b_user"), tables, rest, arr("path_ids"), arr("indptr"),
                   arr("items"), arr("item_emb", "r" if mmap else None), bool(meta.get("path_major", False)))

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {"w_user": self.w_user, "b_user": self.b_user, "path_ids": self.path_ids,
               "indptr": self.indptr, "items": self.items, "item_emb": self.item_emb}
        for d, t in enumerate(self.tables):
            out[f"table{d}"] = t
        for d, layers in enumerate(self.rest):
            for j, (W, b) in enumerate(layers):
                out[f"rest{d}_{j}_w"], out[f"rest{d}_{j}_b"] = W, b
        return out

    # ------------------------------------------------------------------ beam search
    def _head_logits(self, d: int, pre: np.ndarray) -> np.ndarray:
        """Layer d's MLP after its first Linear: pre (..., H) -> logits (..., K).

        ``pre`` is a scratch array: the first ReLU overwrites it.
        """
        x = pre
        for W, b in self.rest[d]:
            x = np.maximum(x, 0.0, out=x) @ W  # ReLU, Linear
            x += b
        return x

    def beam(self, u_str: np.ndarray, B: int) -> tuple[np.ndarray, np.ndarray]:
        """Top paths by cumulative log p(c | u), as ``beam.beam_search``.

        u_str (n, e) -> paths (n, B', D) int64, cum (n, B') float32, B' = min(B, K^D),
        each row sorted by cumulative log-probability, descending.
        """
        if B < 1:
            raise ValueError(f"beam size must be >= 1, got {B}")
        K, D, H = self.K, self.D, self.H
        u = np.ascontiguousarray(u_str, dtype=np.float32)
        n = u.shape[0]
        user = u @ self.w_user  # (n, D*H) every layer's user share at once
        user += self.b_user
        rows = np.arange(n)[:, None]  # (n, 1)

        # layer 0: one distribution per user
        # (layer 0's ReLU overwrites its slice of ``user``, which nothing reads again)
        logp = _add_log_softmax(self._head_logits(0, user[:, :H]), np.zeros(n, np.float32))  # (n, K)
        node = _top_sorted(logp, min(B, K))  # (n, b)
        cum = logp[rows, node]  # (n, b) sorted descending
        paths = node[:, :, None]  # (n, b, 1)

        for d in range(1, D):
            b = paths.shape[1]
            table = self.tables[d]  # (d*K, H)
            pre = table[paths[:, :, 0]]  # (n, b, H) the share of the layer-0 node
            for i in range(1, d):
                pre += table[i * K + paths[:, :, i]]  # (n, b, H) + the layer-i node's
            pre += user[:, None, d * H : (d + 1) * H]  # (n, b, H) + the user's
            score = _add_log_softmax(self._head_logits(d, pre), cum)  # (n, b, K) cumulative
            score = score.reshape(n, b * K)  # (n, b*K)
            idx = _top_sorted(score, min(B, b * K))  # (n, b') sorted descending
            cum = score[rows, idx]  # (n, b')
            parent, node = np.divmod(idx, K)  # (n, b') beam it came from, node at layer d
            paths = np.concatenate([paths[rows, parent], node[:, :, None]], axis=2)  # (n, b', d+1)
        return paths, cum

    # ------------------------------------------------------------------ candidates
    def candidates(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct items on each row's paths, grouped by row: flat (n, B) ->
        ``items`` (total,), ``row`` (total,) ascending, ``lengths`` (n,).

        Batched, the items of a row come sorted ascending (one sort of (row, item) keys,
        as ``PathIndex.candidates``). For one row duplicates are dropped in O(total)
        instead, with a (V,) scratch array of positions, one per thread (pages touched lazily).
        """
        n, Bp = flat.shape
        P = len(self.path_ids)
        if P == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(n, dtype=np.int64)
        f = flat.reshape(-1)  # (n*B,)
        pos = np.minimum(np.searchsorted(self.path_ids, f), P - 1)  # (n*B,)
        start = self.indptr[pos]  # (n*B,)
        size = np.where(self.path_ids[pos] == f, self.indptr[pos + 1] - start, 0)  # (n*B,)
        total = int(size.sum())
        # gathered position t of slice r reads items[start_r + t - offset_r]
        offset = np.cumsum(size) - size  # (n*B,)
        shift = np.repeat(start - offset, size)  # (total,)
        t = np.arange(total)  # (total,)
        items = self.items[t + shift]  # (total,) with duplicates
        if n == 1:
            stamp = getattr(self._local, "stamp", None)
            if stamp is None:
                stamp = self._local.stamp = np.empty(len(self.item_emb), dtype=np.int64)  # (V,)
            stamp[items] = t  # one position per distinct item survives the writes ...
            items = items[stamp[items] == t]  # (m,) ... and keeps that occurrence
            return items, np.zeros(len(items), dtype=np.int64), np.array([len(items)])
        V = max(len(self.item_emb), 1)
        row = np.repeat(np.arange(n), size.reshape(n, Bp).sum(axis=1))  # (total,)
        key = np.sort(row * V + items)  # by (row, item); np.unique's hash path is far slower
        key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # duplicates gone
        row, items = np.divmod(key, V)
        return items, row, np.bincount(row, minlength=n)

    # ------------------------------------------------------------------ search
    def search(
        self, u_str: np.ndarray, u_rr: np.ndarray, k: int, B: int, chunk: int = 32,
        drop=None, exclude=None, allow=None, extra=None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Beam search (B paths) -> candidates -> filters -> inner-product rerank -> top-k.

        u_str, u_rr (n, e) float32 user embeddings (structure / reranker; the same array
        for a shared encoder). Optional filters, all dense item indices: ``drop`` n rows
        (a Ragged or lists) of items user i must not get (its history for exclude-history),
        ``exclude`` (m,) items nobody gets, ``allow`` (m,) the only items anybody gets.
        Returns ids (n, k) int64 padded -1, scores (n, k) float32 padded -inf, best first,
        and n_candidates (n,) distinct items reranked per user (after the filters).
        Users go through in blocks of ``chunk``, so that a block's (chunk, B, H) and
        (chunk, candidates, e) temporaries stay in cache.

        ``extra(users, cands)``: a term added to the inner products before the top-k (a blend's
        ``w * LogMean(scorer)``): ``users`` (b,) the positions of a block's users among the n,
        ``cands`` their candidates after the filters (a Ragged of b rows, ascending within a
        row when b > 1); it returns one float32 per candidate, in ``cands.values``' order.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        u_str = np.ascontiguousarray(u_str, dtype=np.float32)
        u_rr = np.ascontiguousarray(u_rr, dtype=np.float32)
        n = u_rr.shape[0]
        if drop is not None:
            drop = as_ragged(drop)
            if len(drop) != n:
                raise ValueError(f"drop has {len(drop)} rows for {n} users")
        exclude = None if exclude is None else unique_sorted(np.asarray(exclude, dtype=np.int64))
        allow = None if allow is None else unique_sorted(np.asarray(allow, dtype=np.int64))
        if n <= chunk:
            return self._search(u_str, u_rr, k, B, drop, exclude, allow, extra, np.arange(n))
        parts = [self._search(u_str[lo : lo + chunk], u_rr[lo : lo + chunk], k, B,
                              None if drop is None else drop.take(np.arange(lo, min(lo + chunk, n))),
                              exclude, allow, extra, np.arange(lo, min(lo + chunk, n)))
                 for lo in range(0, n, chunk)]
        return tuple(np.concatenate(x) for x in zip(*parts, strict=True))

    def _search(self, u_str, u_rr, k: int, B: int, drop: Ragged | None, exclude, allow, extra=None,
                users: np.ndarray | None = None):
        n = u_rr.shape[0]
        if self.use_kernels and (n <= ONE_BY_ONE or self.slot_emb is not None):  # user by user
            users = np.arange(n) if users is None else users
            parts = [self._search_one(u_str[i], u_rr[i], k, B,
                                      drop if drop is None or n == 1 else drop.take(np.array([i])),
                                      exclude, allow, extra, users[i : i + 1]) for i in range(n)]
            return parts[0] if n == 1 else tuple(np.concatenate(x) for x in zip(*parts, strict=True))
        paths, _ = self.beam(u_str, B)  # (n, B', D)
        items, row, lengths = self.candidates(to_flat(paths, self.K))  # (total,), (total,), (n,)
        if drop is not None or exclude is not None or allow is not None:
            keep = np.ones(len(items), dtype=bool)  # (total,)
            if drop is not None and len(drop.values):
                keep &= ~pairs_in_history(row, items, drop)
            if exclude is not None:
                keep &= ~_member(exclude, items)
            if allow is not None:
                keep &= _member(allow, items)
            items, row = items[keep], row[keep]  # rows stay grouped and in order
            lengths = np.bincount(row, minlength=n)  # (n,)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        m = int(lengths.max(initial=0))  # widest row
        if m == 0:
            return ids, scores, lengths
        add = None
        if extra is not None:  # (total,) one term per candidate, in items' order
            add = np.asarray(extra(users, Ragged.from_lengths(items, lengths)), dtype=np.float32)
        if n == 1:
            s = self._scores(items, u_rr[0])[None, :]  # (1, m)
            if add is not None:
                s = s + add[None, :]
            cand = items[None, :]  # (1, m)
        else:  # rows are contiguous: padded to (n, m) in one scatter
            start = np.cumsum(lengths) - lengths  # (n,) each user's first position in items
            col = np.arange(len(items)) - np.repeat(start, lengths)  # (total,)
            vals = self._each_user_scores(items, start, lengths, u_rr)  # (total,)
            if add is not None:
                vals += add
            s = np.full((n, m), -np.inf, dtype=np.float32)  # (n, m)
            s[row, col] = vals
            cand = np.full((n, m), -1, dtype=np.int64)  # (n, m)
            cand[row, col] = items
        kk = min(k, m)
        top = _top_sorted(s, kk)  # (n, kk) best first
        rows = np.arange(n)[:, None]  # (n, 1)
        top_s = s[rows, top]  # (n, kk)
        ok = np.isfinite(top_s)
        ids[:, :kk] = np.where(ok, cand[rows, top], -1)
        scores[:, :kk] = np.where(ok, top_s, -np.inf)
        return ids, scores, lengths

    def _search_one(self, u_str, u_rr, k: int, B: int, drop: Ragged | None, exclude, allow, extra,
                    users) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_search`` of one user (u_str, u_rr (e,)) through ``single.py``'s kernels."""
        if B < 1:
            raise ValueError(f"beam size must be >= 1, got {B}")
        flat, _ = beam_one(u_str, B, self.K, self.D, self.w_user, self.b_user, self._tables_stacked,
                           self._mlp)  # (B',) flat path ids
        mark = getattr(self._local, "mark", None)
        if mark is None:
            mark = self._local.mark = np.zeros(len(self.item_emb), dtype=np.bool_)  # (V,)
        slots = candidates_one(
            flat, self.path_ids, self.indptr, self.items, mark,
            _NO_ITEMS if drop is None else np.asarray(drop.values, dtype=np.int64),
            _NO_ITEMS if exclude is None else exclude, _NO_ITEMS if allow is None else allow,
            allow is not None,
        )  # (m,) positions in self.items of the candidates
        add = _NO_TERMS
        if extra is not None and len(slots):
            cands = self.items[slots]  # (m,) item ids
            add = np.asarray(extra(users, Ragged.from_lengths(cands, np.array([len(cands)]))),
                             dtype=np.float32)  # (m,)
        by_slot = self.slot_emb is not None
        table = self.slot_emb if by_slot else np.asarray(self.item_emb)  # a memory map's view
        top, top_s = rerank_one(slots, self.items, table, by_slot, u_rr, add, extra is not None, k)
        ok = np.isfinite(top_s)
        ids = np.full((1, k), -1, dtype=np.int64)
        scores = np.full((1, k), -np.inf, dtype=np.float32)
        ids[0, : len(top)] = np.where(ok, top, -1)
        scores[0, : len(top)] = np.where(ok, top_s, -np.inf)
        return ids, scores, np.array([len(slots)], dtype=np.int64)

    def _kernel_arrays(self) -> tuple[np.ndarray, tuple]:
        """The arrays as ``single.beam_one`` takes them: the prefix tables of layers 1..D-1
        stacked (rows, H), and the Linears after the first flattened (``single._head``)."""
        L = len(self.rest[0]) if self.rest else 0
        if any(len(r) != L for r in self.rest):
            raise DRError("retriever: every layer's MLP must have the same number of Linears")
        linears = [lin for r in self.rest for lin in r]  # layer d's j-th at d*L + j
        shape = np.array([W.shape for W, _ in linears], dtype=np.int64).reshape(-1, 2)  # (D*L, 2)
        sizes = shape[:, 0] * shape[:, 1]
        mlp = (np.concatenate([np.zeros(0), *(W.reshape(-1) for W, _ in linears)]).astype(np.float32),
               np.concatenate([np.zeros(0), *(b for _, b in linears)]).astype(np.float32), shape,
               np.cumsum(sizes) - sizes, np.cumsum(shape[:, 1]) - shape[:, 1], L)
        tables = np.concatenate([np.zeros((0, self.H)), *self.tables[1:]]).astype(np.float32)
        return np.ascontiguousarray(tables), mlp

    def _scores(self, items: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Inner products of one user u (e,) with the given items (m,) -> (m,) float32.

        Gathering m random rows costs several times more per row than streaming the
        whole matrix, so above ``DENSE_FRACTION`` of the corpus every item is scored
        (one matrix-vector product) and the candidates' scores are picked out.
        """
        if len(items) > DENSE_FRACTION * len(self.item_emb):
            return (self.item_emb @ u)[items]  # (m,)
        return np.take(self.item_emb, items, axis=0) @ u  # (m,); take: ~40% faster than E[items]

    def _each_user_scores(self, items: np.ndarray, start: np.ndarray, lengths: np.ndarray,
                          u: np.ndarray) -> np.ndarray:
        """``_scores`` of each user u (n, e) with its candidates -> (total,) float32: user i's
        are ``items[start[i] : start[i] + lengths[i]]``.

        Users with more than ``DENSE_FRACTION`` of V candidates (scored against every item, as
        ``_scores`` does) go together, up to ``DENSE_BLOCK`` scores at a time, through one
        (users, e) x (e, V) product: the matrix is read once for them, not once per user. The
        values then equal ``_scores``' to float rounding (a matrix product instead of a
        matrix-vector one), so a tie may break differently in another block.
        """
        V = len(self.item_emb)
        out = np.empty(len(items), dtype=np.float32)  # (total,)
        end = start + lengths  # (n,)
        wide = lengths > DENSE_FRACTION * V  # (n,) users scored against every item
        blocks = np.flatnonzero(wide)
        step = max(1, DENSE_BLOCK // max(V, 1))
        for lo in range(0, len(blocks), step):
            blk = blocks[lo : lo + step]
            full = u[blk] @ self.item_emb.T  # (blk, V)
            for j, i in enumerate(blk):
                out[start[i] : end[i]] = full[j, items[start[i] : end[i]]]
        for i in np.flatnonzero(~wide & (lengths > 0)):  # gathered rows
            out[start[i] : end[i]] = self._scores(items[start[i] : end[i]], u[i])
        return out
