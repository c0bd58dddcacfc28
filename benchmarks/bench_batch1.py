"""One user at a time: DR's search through single.py's kernels against the numpy path, and exact search.

    python benchmarks/bench_batch1.py [--sizes 5000,100000,1000000] [--k 10] [--B 20] [--K K]
        [--path-major] [--model MODEL --data DATA] [--users 300] [--out benchmarks/out/batch1.json]

For each case, the median of ``--users`` single-user calls (given the user embeddings; the
encoder is the same for all three and not timed) of

- ``fast.Retriever.search`` with n = 1 through the compiled kernels (``single.py``, the default),
- the same Retriever with ``use_kernels = False`` (the numpy code that large batches use),
- exact search: numpy ``item_emb @ u``, then ``argpartition`` and a sort of the top k,
- with ``--path-major``, the kernels over a path-major copy of the item embeddings
  (``beam.path_major``),

measured in turns in the same process (three rounds; the JSON keeps every round), plus the
share of the numpy path's top-k ids the kernels return. Cases: random structure models over a
random J = 3 assignment (K = 10 / 30 / 100 by size unless ``--K``, D = 3, e = 32 / 32 / 64) at each
``--sizes`` entry, with random unit user vectors; with ``--model`` and ``--data`` also a trained
model on its data's test users, history items excluded (as ``dr evaluate --exclude-history``).
Writes the JSON and a markdown table next to it. One thread (set before numpy loads).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep_retrieval.config import StructureConfig  # noqa: E402
from deep_retrieval.fast import Retriever  # noqa: E402
from deep_retrieval.paths import PathIndex  # noqa: E402
from deep_retrieval.structure import StructureModel  # noqa: E402

OUT = Path(__file__).parent / "out"


def median_ms(f, n: int) -> float:
    ts = []
    for i in range(n):
        t = time.perf_counter()
        f(i)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def random_case(V: int, K: int | None = None, seed: int = 0) -> dict:
    k_default, e = (10, 32) if V <= 20_000 else (30, 32) if V <= 300_000 else (100, 64)
    K = K or k_default
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    st = StructureModel(StructureConfig(K=K, D=3, J=3, hidden=(256,)), e).eval()
    emb = rng.standard_normal((V, e)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    r = Retriever.from_parts(st, PathIndex(rng.integers(0, K**3, size=(V, 3))), emb)
    U = rng.standard_normal((1000, e)).astype(np.float32)
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    return {"name": f"random, V = {V:,}, K = {K}, D = 3, e = {e}", "r": r, "u_str": U, "u_rr": U,
            "drop": None}


def model_case(model_dir: str, data_dir: str) -> dict:
    from deep_retrieval.data.dataset import Dataset
    from deep_retrieval.model import DeepRetrieval

    m, ds = DeepRetrieval.load(model_dir), Dataset.load(data_dir)
    hist = ds.test.hist
    return {"name": f"{model_dir} on {data_dir} test users (V = {m.n_items:,}, K = "
                    f"{m.config.structure.K}, D = {m.config.structure.D}), history excluded",
            "r": Retriever.from_model(m), "u_str": m.user_embeddings(hist, "str"),
            "u_rr": m.user_embeddings(hist, "rr"), "drop": hist}


def measure(case: dict, k: int, B: int, users: int, path_major: bool) -> dict:
    r, U, R, drop = case["r"], case["u_str"], case["u_rr"], case["drop"]
    n = min(users, len(U))
    E = np.asarray(r.item_emb)
    slow = copy.copy(r)  # the same arrays, its own scratch
    slow.use_kernels = False
    pm = None
    if path_major:  # the same arrays plus the path-major copy of the item embeddings
        pm = copy.copy(r)
        pm.slot_emb = np.ascontiguousarray(E[r.items])

    def dr(ret):
        def call(i):
            return ret.search(U[i : i + 1], R[i : i + 1], k, B,
                              drop=None if drop is None else drop.take(np.array([i])))
        return call

    def exact(i):
        s = E @ R[i]  # (V,)
        if drop is not None:
            s[drop[i]] = -np.inf
        top = np.argpartition(-s, k)[:k]
        return top[np.argsort(-s[top], kind="stable")]

    dr(r)(0)  # compile / load the kernels
    agree = []
    for i in range(min(n, 100)):
        b = dr(slow)(i)[0][0]
        for other in [r] + ([pm] if pm is not None else []):
            a = dr(other)(i)[0][0]
            agree.append(len(set(a[a >= 0]) & set(b[b >= 0])) / max((b >= 0).sum(), 1))
    rounds = []
    for _ in range(3):
        rounds.append({"kernels_ms": median_ms(dr(r), n), "numpy_ms": median_ms(dr(slow), n),
                       "exact_ms": median_ms(exact, n)})
        if pm is not None:
            rounds[-1]["path_major_ms"] = median_ms(dr(pm), n)
    cands = r.search(U[:n], R[:n], k, B, drop=None if drop is None else drop.take(np.arange(n)))[2]
    med = {key: float(np.median([x[key] for x in rounds])) for key in rounds[0]}
    return {"case": case["name"], "V": int(len(E)), "k": k, "B": B, "users": n,
            "candidates_mean": float(cands.mean()), "same_topk_share": float(np.mean(agree)),
            "rounds": rounds, **med,
            "numpy_over_kernels": med["numpy_ms"] / med["kernels_ms"],
            "exact_over_kernels": med["exact_ms"] / med["kernels_ms"],
            **({"exact_over_path_major": med["exact_ms"] / med["path_major_ms"]} if pm is not None else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,100000,1000000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--B", type=int, default=20)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--K", type=int, default=None, help="K of the random models (default: by size)")
    ap.add_argument("--path-major", action="store_true",
                    help="also time the kernels over a path-major copy of the item embeddings")
    ap.add_argument("--out", default=str(OUT / "batch1.json"))
    a = ap.parse_args()
    if (a.model is None) != (a.data is None):
        ap.error("--model and --data go together")
    torch.set_num_threads(1)
    rows = []
    for V in [int(float(v)) for v in a.sizes.split(",") if v]:
        rows.append(measure(random_case(V, a.K), a.k, a.B, a.users, a.path_major))
        print(json.dumps({x: rows[-1][x] for x in rows[-1] if x != "rounds"}), flush=True)
    if a.model:
        rows.append(measure(model_case(a.model, a.data), a.k, a.B, a.users, a.path_major))
        print(json.dumps({x: rows[-1][x] for x in rows[-1] if x != "rounds"}), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1) + "\n")
    pmh = " | path-major (ms) | exact / path-major" if a.path_major else ""
    lines = ["| case | k | B | candidates | kernels (ms) | numpy path (ms) | numpy / kernels "
             f"| exact numpy (ms) | exact / kernels{pmh} | same top-k |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if a.path_major else "") + "---|"]
    for x in rows:
        pmc = (f" | {x['path_major_ms']:.3f} | {x['exact_over_path_major']:.1f}x" if a.path_major else "")
        lines.append(f"| {x['case']} | {x['k']} | {x['B']} | {x['candidates_mean']:,.0f} "
                     f"| {x['kernels_ms']:.3f} | {x['numpy_ms']:.3f} | {x['numpy_over_kernels']:.1f}x "
                     f"| {x['exact_ms']:.3f} | {x['exact_over_kernels']:.1f}x{pmc} "
                     f"| {x['same_topk_share']:.4f} |")
    given = " ".join(f"--{k} {v}" for k, v in vars(a).items() if v is not None and k != "out")
    out.with_suffix(".md").write_text(
        "# One user at a time: single.py's kernels vs the numpy path vs exact search\n\n"
        f"`python benchmarks/bench_batch1.py {given}`; medians of single-user calls over three rounds "
        "in one process, user embeddings given.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
