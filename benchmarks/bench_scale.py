"""Retrieval cost against corpus size: DR (numpy serving path) vs exact brute force vs HNSW.

For every corpus size V (synthetic data, ``data/synth.py``) a DR model is trained at the
paper's Amazon setting (``paper-amazon``: K=100, D=3, J=3, B=50, e=64), with a shared
mean-pool encoder of item_dim 32 so that V = 10^7 fits in memory, a capped number of
training examples per epoch, 1 joint epoch (--epochs-dr 0 by default), --msteps evenly
spaced M-steps with the last on the epoch's last batch, one thread. Then, from
PRECOMPUTED user embeddings of the test users (the encoder is not timed):

- DR: ``fast.Retriever.search`` (beam search + candidate gather + inner-product rerank +
  top-200) at batch 1 (median and p99 over the latency users) and at batch 256 (time per
  user), recall@200 against the exact top-200 of the same reranker at several beam sizes;
- exact top-200 over the same reranker item embeddings with numpy, torch and faiss
  IndexFlatIP, batch 1 and batch 256 (numpy and torch score blocks of <= 2^27 scores);
- faiss IndexHNSWFlat (inner product, M=16) at several efSearch, where V <= --hnsw-max.

Everything runs on one thread (numpy's OpenBLAS, torch, faiss). Peak RSS of a serving
process (load the saved model, build the Retriever, load the queries, search) is measured
in a child process. Results: benchmarks/out/scale.json (rewritten after every V),
scale_latency.png, scale_pareto.png, and a section appended to benchmarks/README.md.

    python benchmarks/bench_scale.py [--sizes 1e4,1e5,1e6,1.5e6,1e7] [--work /tmp/dr-scale]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch/faiss load their thread pools

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep_retrieval.config import Config  # noqa: E402
from deep_retrieval.data.synth import SynthConfig, generate, top_list_spread  # noqa: E402
from deep_retrieval.fast import Retriever  # noqa: E402
from deep_retrieval.model import DeepRetrieval  # noqa: E402

OUT = Path(__file__).parent / "out"
TOPK = 200
BATCH = 256
BEAMS = (1, 5, 10, 25, 50, 100)
EF_SEARCH = (50, 100, 200, 400, 800)
HNSW_M, HNSW_EFC = 16, 100
SCORE_BLOCK = 1 << 27  # scores per block in the batched numpy / torch brute force


# ----------------------------------------------------------------------------- setup
def dr_config(args) -> Config:
    cfg = Config.builtin("paper-amazon")
    cfg.encoder.kind, cfg.encoder.shared, cfg.encoder.item_dim = "mean", True, 32
    cfg.em.S = args.em_S
    # M-steps every mstep_every batches, the last one on the epoch's last batch: the items
    # of the last window then land on paths the final structure model's beams reach
    batches = args.train_examples // cfg.train.batch_size // args.msteps * args.msteps
    cfg.em.mstep_every = batches // args.msteps
    t = cfg.train
    t.epochs_joint, t.epochs_dr = args.epochs_joint, args.epochs_dr
    t.max_examples_per_epoch = batches * t.batch_size
    t.threads, t.progress = 1, False
    return cfg.validate()


def synth_config(V: int, args) -> SynthConfig:
    return SynthConfig(
        n_items=V, n_users=args.users, n_interactions=args.interactions,
        val_users=args.val_users, test_users=args.queries, seed=0,
    )


def memory_guard(min_free_gib: float) -> None:
    """Exit if the machine's available memory falls below ``min_free_gib`` (it is shared)."""
    import threading

    import psutil

    def watch() -> None:
        while True:
            free = psutil.virtual_memory().available / 2**30
            if free < min_free_gib:
                print(f"memory guard: only {free:.1f} GiB available, exiting", flush=True)
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def peak_rss_gib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry a fork parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------- timing
BUDGET_B1_S, BUDGET_B256_S = 30.0, 60.0  # per measurement; --b1-budget / --b256-budget


def per_call_ms(fn, U: np.ndarray, warmup: int = 5, budget_s: float | None = None) -> dict:
    """fn(u (1, e)) for the rows of U, one at a time: median / p99 / mean ms per call.

    Stops early (after at least 20 users) once ``budget_s`` seconds are spent.
    """
    budget_s = BUDGET_B1_S if budget_s is None else budget_s
    for i in range(min(warmup, len(U))):
        fn(U[i : i + 1])
    t = []
    start = time.perf_counter()
    for i in range(len(U)):
        t0 = time.perf_counter()
        fn(U[i : i + 1])
        t.append(time.perf_counter() - t0)
        if i >= 19 and time.perf_counter() - start > budget_s:
            break
    t = np.array(t) * 1e3
    return {"b1_median_ms": float(np.median(t)), "b1_p99_ms": float(np.percentile(t, 99)),
            "b1_mean_ms": float(t.mean()), "b1_users": len(t)}


def per_user_batched_ms(fn, U: np.ndarray, budget_s: float | None = None) -> tuple[dict, list]:
    """fn(batch) on consecutive batches of BATCH users: ms per user (mean over the batches).

    Stops early (after at least one batch) once ``budget_s`` seconds are spent.
    """
    budget_s = BUDGET_B256_S if budget_s is None else budget_s
    outs, total, users = [], 0.0, 0
    for lo in range(0, len(U), BATCH):
        t0 = time.perf_counter()
        outs.append(fn(U[lo : lo + BATCH]))
        total += time.perf_counter() - t0
        users += len(U[lo : lo + BATCH])
        if total > budget_s:
            break
    return {"b256_ms_per_user": total * 1e3 / users, "b256_users": users}, outs


# ----------------------------------------------------------------------------- exact
def topk_rows_numpy(s: np.ndarray, k: int) -> np.ndarray:
    """(n, V) scores -> (n, k) ids, best first (argpartition + sort of the k)."""
    part = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]  # (n, k)
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def exact_numpy(E: np.ndarray, U: np.ndarray, k: int) -> np.ndarray:
    if len(U) == 1:
        return topk_rows_numpy((E @ U[0])[None, :], k)  # matrix-vector: the fast one
    rows = max(1, SCORE_BLOCK // len(E))
    return np.concatenate([topk_rows_numpy(U[lo : lo + rows] @ E.T, k) for lo in range(0, len(U), rows)])


def exact_torch(Et: torch.Tensor, U: np.ndarray, k: int) -> np.ndarray:
    u = torch.from_numpy(U)
    rows = max(1, SCORE_BLOCK // Et.shape[0])
    return torch.cat([(u[lo : lo + rows] @ Et.T).topk(k, dim=1).indices
                      for lo in range(0, len(U), rows)]).numpy()


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found ∩ truth| / |truth| (ids < 0 ignored)."""
    n = min(len(found), len(truth))  # the users both were run on
    hits = [len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found[:n], truth[:n], strict=True)]
    return float(np.mean(hits))


# ----------------------------------------------------------------------------- serving RSS
def serve_child(how: str, path: str, queries: str) -> None:
    """A serving process: load the model (``how`` = "model": ``DeepRetrieval.load`` then
    ``Retriever.from_model``; "retriever": ``Retriever.load`` of its saved arrays), load the
    queries, search 100 users one at a time and one batch of 256; print the peak RSS."""
    t0 = time.perf_counter()
    if how == "model":
        model = DeepRetrieval.load(path)
        r = Retriever.from_model(model)
    else:
        r = Retriever.load(path)
    rss_loaded = peak_rss_gib()
    U = np.load(queries)
    t_load = time.perf_counter() - t0
    B = Config.builtin("paper-amazon").beam.B
    for i in range(min(100, len(U))):
        r.search(U[i : i + 1], U[i : i + 1], TOPK, B)
    r.search(U[:BATCH], U[:BATCH], TOPK, B)
    print(json.dumps({"peak_rss_gib": peak_rss_gib(), "peak_rss_after_load_gib": rss_loaded,
                      "load_s": t_load}))


def measure_serving_rss(how: str, path: Path, queries: Path) -> dict:
    cmd = [sys.executable, __file__, "--serve-child", how, str(path), str(queries)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-500:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- one size
def run_size(V: int, args, log) -> dict:
    rec: dict = {"V": V}
    work = Path(args.work) / f"V{V}"
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    ds, _ = generate(synth_config(V, args))
    rec["data"] = {"generate_s": time.perf_counter() - t0, **ds.manifest["counts"],
                   "users": args.users}
    log(f"V={V:,}: data {rec['data']}")

    model_dir = work / "model"
    t0 = time.perf_counter()
    if args.reuse and (model_dir / "meta.json").is_file():
        model = DeepRetrieval.load(model_dir)
        rec["train"] = {"reused": str(model_dir)}
    else:
        model = DeepRetrieval(dr_config(args)).fit(ds, log=lambda s: log(f"  {s}"))
        rec["train"] = {"seconds": time.perf_counter() - t0}
        model.save(model_dir)
    torch.set_num_threads(1)
    last = model.log[-1]
    rec["train"].update({
        "epochs": [{k: e.get(k) for k in ("phase", "examples", "Q_str", "Q_softmax", "val_recall@10",
                                          "candidates_per_user", "seconds_e_step", "seconds_m_step")}
                   for e in model.log],
        "paths": {k: last["paths"][k] for k in ("non_empty", "largest", "mean", "median", "p99")},
        "config": model.config.to_dict(),
    })
    log(f"V={V:,}: trained/loaded in {time.perf_counter() - t0:.0f}s, paths {rec['train']['paths']}")

    # precomputed user embeddings of the test users (shared encoder: u_str is u_rr)
    hist = ds.test.hist
    U = model.user_embeddings(hist, "rr")  # (n, e)
    assert model.config.encoder.shared
    qfile = work / "queries.npy"
    np.save(qfile, U)
    train_counts = ds.item_counts()  # (V,) for the spread of the exact top-200 below
    del ds
    U_rec = U[: args.recall_users]  # recall and batch-256 users
    U_lat = U[: args.latency_users]  # batch-1 latency users
    E = model.net.reranker.item_emb.weight.detach().numpy()  # (V, e) the reranker's items
    r = Retriever.from_model(model)
    r.save(work / "retriever")

    # exact brute force: numpy, torch, faiss IndexFlatIP
    import faiss

    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(E.shape[1])
    flat.add(E)
    Et = torch.from_numpy(E)
    n_b1 = args.latency_users if V <= 2_000_000 else args.exact_users_large
    methods = {
        "numpy": lambda u: exact_numpy(E, u, TOPK),
        "torch": lambda u: exact_torch(Et, u, TOPK),
        "faiss-flat": lambda u: flat.search(u, TOPK)[1],
    }
    rec["exact"] = {}
    truth = None
    for name, fn in methods.items():
        m = per_call_ms(fn, U[:n_b1], warmup=2)
        users = U_rec if name == "numpy" else U_rec[:BATCH]
        b, outs = per_user_batched_ms(fn, users, budget_s=1e9 if name == "numpy" else None)
        found = np.concatenate(outs)
        if truth is None:
            truth = found  # numpy's exact top-200 is the reference
        m.update(b, recall_vs_numpy=recall(found, truth[: len(found)]))
        rec["exact"][name] = m
        log(f"V={V:,}: exact {name}: {m}")
    # how personal is the reranker? a popularity-dominated one gives every user the same
    # top-200, which any index that keeps the popular items together finds easily
    in_lists, by_training = top_list_spread(truth, None, TOPK), top_list_spread(truth, train_counts, TOPK)
    rec["exact_top200_spread"] = {
        "users": len(truth), "distinct_items": in_lists["distinct"],
        "share_in_200_most_common": in_lists["share_in_most_common"],  # most common in the lists
        "share_in_200_most_trained": by_training["share_in_most_common"],  # by training counts
    }
    fastest_b1 = min(rec["exact"], key=lambda n: rec["exact"][n]["b1_median_ms"])
    fastest_b256 = min(rec["exact"], key=lambda n: rec["exact"][n]["b256_ms_per_user"])
    rec["exact_fastest"] = {
        "b1": fastest_b1, "b1_median_ms": rec["exact"][fastest_b1]["b1_median_ms"],
        "b256": fastest_b256, "b256_ms_per_user": rec["exact"][fastest_b256]["b256_ms_per_user"],
    }

    # DR at several beam sizes
    rec["dr"] = []
    for B in BEAMS:
        m = per_call_ms(lambda u, B=B: r.search(u, u, TOPK, B), U_lat)
        b, outs = per_user_batched_ms(lambda u, B=B: r.search(u, u, TOPK, B), U_rec)
        ids = np.concatenate([o[0] for o in outs])
        n_cand = np.concatenate([o[2] for o in outs])
        m.update(b, B=B, recall_at_200=recall(ids, truth),
                 candidates_mean=float(n_cand.mean()), candidates_p99=float(np.percentile(n_cand, 99)))
        rec["dr"].append(m)
        log(f"V={V:,}: DR B={B}: {m}")
    check = model.recommend(hist.take(np.arange(8)), TOPK, B=model.config.beam.B)[0]
    got = r.search(U[:8], U[:8], TOPK, model.config.beam.B)[0]
    rec["dr_matches_recommend"] = float((check == got).mean())

    # HNSW
    if V <= args.hnsw_max:
        idx = faiss.IndexHNSWFlat(E.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = HNSW_EFC
        t0 = time.perf_counter()
        faiss.omp_set_num_threads(args.hnsw_build_threads)  # the build only; searches use 1
        idx.add(E)
        faiss.omp_set_num_threads(1)
        build = time.perf_counter() - t0
        rec["hnsw"] = {"M": HNSW_M, "efConstruction": HNSW_EFC, "build_s": build,
                       "build_threads": args.hnsw_build_threads, "points": []}
        log(f"V={V:,}: HNSW built in {build:.0f}s")
        for ef in EF_SEARCH:
            idx.hnsw.efSearch = ef
            m = per_call_ms(lambda u: idx.search(u, TOPK)[1], U_lat)
            b, outs = per_user_batched_ms(lambda u: idx.search(u, TOPK)[1], U_rec)
            found = np.concatenate(outs)
            m.update(b, efSearch=ef, recall_at_200=recall(found, truth))
            rec["hnsw"]["points"].append(m)
            log(f"V={V:,}: HNSW ef={ef}: {m}")
    else:
        rec["hnsw"] = {"skipped": f"not built in this run (V > --hnsw-max {args.hnsw_max:,.0f}), "
                                  "to keep the single-thread build time tolerable"}
    return rec  # the caller measures the serving process once this frame's arrays are freed


# ----------------------------------------------------------------------------- reference
def balanced_reference(V: int, args, log) -> dict:
    """The serving path's cost with balanced paths: the trained structure model and item
    embeddings of ``--work``/V*/retriever, but the index of a uniformly random J-path
    assignment (what training starts from: V*J/K^D items per path). Latency only: the
    recall of a random assignment means nothing. Separates the cost of serving from the
    path sizes a (short) training run produced."""
    from deep_retrieval.paths import PathIndex, random_assignment

    work = Path(args.work) / f"V{V}"
    r = Retriever.load(work / "retriever")
    U = np.load(work / "queries.npy")
    cfg = Config.builtin("paper-amazon")
    S = cfg.structure
    index = PathIndex(random_assignment(V, S.J, S.K**S.D, np.random.default_rng(0)))
    r.path_ids, r.indptr, r.items = index.path_ids, index.indptr, index.items
    B = cfg.beam.B
    m = per_call_ms(lambda u: r.search(u, u, TOPK, B), U[: args.latency_users])
    b, outs = per_user_batched_ms(lambda u: r.search(u, u, TOPK, B), U[: args.recall_users])
    n_cand = np.concatenate([o[2] for o in outs])
    m.update(b, B=B, candidates_mean=float(n_cand.mean()), items_per_path=V * S.J / S.K**S.D)
    log(f"V={V:,}: DR serving with a balanced (random) index: {m}")
    return m


# ----------------------------------------------------------------------------- report
def dr_at(rec: dict, B: int) -> dict:
    return next(d for d in rec["dr"] if d["B"] == B)


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto front (latency ascending, recall strictly rising) of (latency, recall) points."""
    out, best = [], -1.0
    for lat, rc in sorted(points):
        if rc > best:
            out.append((lat, rc))
            best = rc
    return out


def best_recall_within(fr: list[tuple[float, float]], lat: float) -> float:
    """Best recall of a front at latency <= lat (-1 if none)."""
    return max((rc for la, rc in fr if la <= lat), default=-1.0)


def compare_fronts(dr: list, hnsw: list) -> dict:
    """Is DR's step front >= HNSW's at every latency where both have a point?"""
    fd, fh = front(dr), front(hnsw)
    lo, hi = max(fd[0][0], fh[0][0]), min(fd[-1][0], fh[-1][0])
    xs = sorted({x for x, _ in fd + fh if lo <= x <= hi} | {lo})
    worst = min((best_recall_within(fd, x) - best_recall_within(fh, x) for x in xs), default=None)
    dominated = all(any(ld <= lh and rd >= rh for ld, rd in dr) for lh, rh in hnsw)
    return {"shared_latency_ms": [lo, hi], "min_recall_margin": worst,
            "met": worst is not None and worst >= 0 and lo <= hi,
            "every_hnsw_point_dominated_by_a_dr_point": dominated,
            "dr_front": fd, "hnsw_front": fh}


def targets(results: list[dict], B: int) -> dict:
    by_v = {r["V"]: r for r in results}
    t: dict = {}
    if 1_500_000 in by_v:
        r = by_v[1_500_000]
        d = dr_at(r, B)
        ex = r["exact_fastest"]
        ratio1 = d["b1_median_ms"] / ex["b1_median_ms"]
        ratio256 = d["b256_ms_per_user"] / ex["b256_ms_per_user"]
        t["b1_ratio_at_1.5e6"] = {"value": ratio1, "target": 1 / 25, "met": ratio1 <= 1 / 25}
        t["b256_ratio_at_1.5e6"] = {"value": ratio256, "target": 1 / 15, "met": ratio256 <= 1 / 15}
        rc = d["recall_at_200"]
        t["recall_at_1.5e6"] = {"value": rc, "target": 0.95, "met": rc >= 0.95}
        if "points" in r["hnsw"]:
            dr_pts = [(x["b1_median_ms"], x["recall_at_200"]) for x in r["dr"]]
            h_pts = [(x["b1_median_ms"], x["recall_at_200"]) for x in r["hnsw"]["points"]]
            t["front_vs_hnsw_at_1.5e6"] = compare_fronts(dr_pts, h_pts)
    if 10_000_000 in by_v and 100_000 in by_v:
        a, b = by_v[10_000_000], by_v[100_000]
        g = dr_at(a, B)["b1_median_ms"] / dr_at(b, B)["b1_median_ms"]
        bf = a["exact_fastest"]["b1_median_ms"] / b["exact_fastest"]["b1_median_ms"]
        t["dr_growth_1e7_over_1e5"] = {"value": g, "target": 1.5, "met": g <= 1.5, "brute_force_growth": bf}
    if 10_000_000 in by_v:
        for key, how in (("serving", "model"), ("serving_retriever_only", "retriever")):
            rss = by_v[10_000_000][key].get("peak_rss_gib", float("nan"))
            t[f"serving_rss_1e7_gib_{how}"] = {"value": rss, "target": 8.0, "met": rss < 8.0}
    return t


def plots(results: list[dict], B: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Vs = [r["V"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(Vs, [dr_at(r, B)["b1_median_ms"] for r in results], "o-", lw=2, label=f"DR B={B}")
    for name in results[0]["exact"]:
        ax.plot(Vs, [r["exact"][name]["b1_median_ms"] for r in results], "s--", label=f"exact {name}")
    hv = [(r["V"], p) for r in results if "points" in r["hnsw"] for p in r["hnsw"]["points"]]
    for ef in EF_SEARCH:
        pts = [(v, p["b1_median_ms"]) for v, p in hv if p["efSearch"] == ef]
        if pts and ef in (100, 400):
            ax.plot(*zip(*pts, strict=True), "^:", label=f"HNSW ef={ef}")
    ax.set(xscale="log", yscale="log", xlabel="items V", ylabel="batch-1 latency per user (ms, median)",
           title="Retrieval latency vs corpus size (top-200, 1 thread, precomputed user embeddings)")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "scale_latency.png", dpi=120)
    plt.close(fig)

    r = next((x for x in results if x["V"] == 1_500_000), results[-1])
    fig, ax = plt.subplots(figsize=(7, 5))
    series = {f"DR (B={', '.join(str(d['B']) for d in r['dr'])})":
              [(d["b1_median_ms"], d["recall_at_200"]) for d in r["dr"]]}
    if "points" in r["hnsw"]:
        series[f"HNSW (ef={', '.join(str(p['efSearch']) for p in r['hnsw']['points'])})"] = [
            (p["b1_median_ms"], p["recall_at_200"]) for p in r["hnsw"]["points"]]
    ex = r["exact_fastest"]
    series[f"exact ({ex['b1']})"] = [(ex["b1_median_ms"], 1.0)]
    for name, pts in series.items():
        line = ax.plot(*zip(*pts, strict=True), "o", alpha=0.5)[0]
        ax.plot(*zip(*front(pts), strict=True), "-", color=line.get_color(), label=name)
    ax.set(xscale="log", xlabel="batch-1 latency per user (ms, median)", ylabel="recall@200 vs exact",
           title=f"Recall vs latency at V = {r['V']:,} (lines: Pareto fronts)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "scale_pareto.png", dpi=120)
    plt.close(fig)


def spread(r: dict) -> str:
    x = r.get("exact_top200_spread")
    return f"{x['distinct_items']:,} / {x['share_in_200_most_common']:.2f}" if x else "-"


def readme_section(results: list[dict], tg: dict, args, B: int, command: str) -> str:
    mark = {True: "met", False: "MISSED"}
    lines = [
        f"## Retrieval cost vs corpus size ({datetime.date.today().isoformat()})",
        "",
        f"`{command}` on {platform.platform()}, nproc {os.cpu_count()}; one thread for everything "
        "(numpy/OpenBLAS, torch, faiss). Latencies from precomputed user embeddings (the encoder "
        f"is not timed), top-{TOPK}; DR = `fast.Retriever.search` (beam + candidate gather + rerank). "
        f"DR trained at paper-amazon (K=100, D=3, J=3) with a shared mean encoder (item_dim 32), "
        f"em.S={args.em_S}, em.explore={results[0]['train'].get('config', {}).get('em', {}).get('explore')}, "
        f"{args.msteps} M-steps per epoch (the last on its last batch), {args.epochs_joint} joint + "
        f"{args.epochs_dr} DR-only epoch(s) of "
        f"{results[0]['train'].get('config', {}).get('train', {}).get('max_examples_per_epoch', 0):,} "
        "examples on "
        f"{args.users:,} synthetic users / {args.interactions:,} interactions. Recall@200 is against "
        "the exact top-200 of the same reranker embeddings.",
        "",
        f"| V | DR B={B} b1 median / p99 ms | DR b256 ms/user | DR recall@200 | candidates/user "
        "| exact b1 ms (numpy / torch / faiss) | exact b256 ms/user (numpy / torch / faiss) "
        "| HNSW build s | HNSW ef=400 b1 ms / recall | serving peak RSS GiB (model / Retriever.load) "
        "| exact top-200s: distinct items / share in the 200 most common |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d, ex = dr_at(r, B), r["exact"]
        h = r["hnsw"]
        p400 = next((p for p in h.get("points", []) if p["efSearch"] == 400), None)
        hb = f"{h['build_s']:.0f}" if "build_s" in h else "skipped"
        hp = f"{p400['b1_median_ms']:.2f} / {p400['recall_at_200']:.3f}" if p400 else "-"
        ex1 = " / ".join(format(ex[n]["b1_median_ms"], ".2f") for n in ex)
        ex256 = " / ".join(format(ex[n]["b256_ms_per_user"], ".2f") for n in ex)
        lines.append(
            f"| {r['V']:,} | {d['b1_median_ms']:.3f} / {d['b1_p99_ms']:.3f} | {d['b256_ms_per_user']:.3f} "
            f"| {d['recall_at_200']:.3f} | {d['candidates_mean']:.0f} "
            f"| {ex1} | {ex256} "
            f"| {hb} | {hp} | {r['serving'].get('peak_rss_gib', float('nan')):.2f} / "
            f"{r['serving_retriever_only'].get('peak_rss_gib', float('nan')):.2f} | {spread(r)} |"
        )
    refs = [r for r in results if "dr_balanced_reference" in r]
    if refs:
        lines += ["", "Serving cost with balanced paths (the trained structure model and item embeddings, "
                  f"but the index of a uniformly random J-path assignment; B={B}; latency only):", ""]
        for r in refs:
            x = r["dr_balanced_reference"]
            lines.append(f"- V={r['V']:,}: {x['items_per_path']:.2f} items/path, {x['candidates_mean']:.0f} "
                         f"candidates/user, batch-1 median {x['b1_median_ms']:.3f} ms (p99 "
                         f"{x['b1_p99_ms']:.3f}), batch-256 {x['b256_ms_per_user']:.3f} ms/user")
    lines += ["", "Targets (same run):", ""]
    if "b1_ratio_at_1.5e6" in tg:
        for key, what, tgt in (("b1_ratio_at_1.5e6", "batch-1", "1/25"),
                               ("b256_ratio_at_1.5e6", "batch-256 (per user)", "1/15")):
            x = tg[key]
            lines.append(f"- V=1.5M, DR {what} / fastest exact {what} = {x['value']:.4f}; "
                         f"target <= {tgt}: {mark[x['met']]}")
        x = tg["recall_at_1.5e6"]
        lines.append(f"- V=1.5M, DR recall@200 at B={B} vs its own brute force = {x['value']:.3f}; "
                     f"target >= 0.95: {mark[x['met']]}")
    if "dr_growth_1e7_over_1e5" in tg:
        x = tg["dr_growth_1e7_over_1e5"]
        lines.append(f"- DR batch-1 latency at 1e7 / at 1e5 = {x['value']:.2f} (brute force: "
                     f"{x['brute_force_growth']:.0f}x); target <= 1.5: {mark[x['met']]}")
    if "front_vs_hnsw_at_1.5e6" in tg:
        x = tg["front_vs_hnsw_at_1.5e6"]
        lo, hi = x["shared_latency_ms"]
        dom = x["every_hnsw_point_dominated_by_a_dr_point"]
        if lo > hi:
            lines.append(f"- V=1.5M, DR recall-latency front vs HNSW's: no shared latency range "
                         f"(DR's fastest "
                         f"point {lo:.2f} ms, HNSW's slowest {hi:.2f} ms); every HNSW point dominated by "
                         f"a DR point: {dom}: MISSED")
        else:
            lines.append(f"- V=1.5M, DR recall-latency front above HNSW's over the shared latencies "
                         f"{lo:.2f}-{hi:.2f} ms: smallest margin {x['min_recall_margin']:+.3f}: "
                         f"{mark[x['met']]} (every HNSW point dominated by a DR point: {dom})")
    for how, what in (("model", "DeepRetrieval.load + Retriever.from_model"),
                      ("retriever", "Retriever.load of its saved arrays")):
        x = tg.get(f"serving_rss_1e7_gib_{how}")
        if x:
            lines.append(f"- V=1e7 serving process peak RSS ({what}, queries, searches) "
                         f"{x['value']:.2f} GiB; "
                         f"target < 8: {mark[x['met']]}")
    for r in results:
        if "skipped" in r["hnsw"]:
            est = r["hnsw"].get("build_s_estimate")
            est = f", estimated build {est:.0f} s (n log n from the largest built)" if est else ""
            lines.append(f"- HNSW not built at V = {r['V']:,}: {r['hnsw']['skipped']}{est}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1.5e6,1e7", help="comma-separated corpus sizes")
    ap.add_argument("--work", default="/tmp/dr-scale", help="models and queries go here")
    ap.add_argument("--users", type=int, default=300_000)
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=1000, help="test users (query histories)")
    ap.add_argument("--val-users", type=int, default=0,
                    help="validation users (training validates on them every epoch; 0 = none: "
                         "DeepRetrieval.recommend gathers (users, candidates, e) floats at once)")
    ap.add_argument("--recall-users", type=int, default=512, help="users of recall and batch-256 timing")
    ap.add_argument("--latency-users", type=int, default=300, help="users of batch-1 timing")
    ap.add_argument("--exact-users-large", type=int, default=50, help="batch-1 exact users at V > 2M")
    ap.add_argument("--train-examples", type=int, default=1_000_000, help="examples per epoch")
    ap.add_argument("--msteps", type=int, default=3,
                    help="M-steps per epoch, evenly spaced, the last on the epoch's last batch "
                         "(--train-examples is rounded down to fit)")
    ap.add_argument("--epochs-joint", type=int, default=1)
    ap.add_argument("--epochs-dr", type=int, default=0,
                    help="DR-only epochs (default 0: at this training budget the DR-only epoch "
                         "concentrates the items on a few huge paths)")
    ap.add_argument("--em-S", type=int, default=10, help="M-step paths per item (memory: V x S x 12 B)")
    ap.add_argument("--hnsw-max", type=float, default=1.5e6, help="largest V with an HNSW index")
    ap.add_argument("--hnsw-build-threads", type=int, default=2,
                    help="threads of the HNSW build (not timed against anything; searches use 1)")
    ap.add_argument("--reuse", action="store_true", help="load a model saved in --work by an earlier run")
    ap.add_argument("--b1-budget", type=float, default=30.0, help="seconds per batch-1 measurement")
    ap.add_argument("--b256-budget", type=float, default=60.0, help="seconds per batch-256 measurement")
    ap.add_argument("--min-free-gib", type=float, default=1.5, help="exit below this much free memory")
    ap.add_argument("--merge", action="store_true",
                    help="keep the results of other sizes already in out/scale.json (one size per run)")
    ap.add_argument("--balanced-reference", action="store_true",
                    help="only measure the balanced-index reference of --sizes (models in --work) "
                         "into out/scale_balanced.json")
    ap.add_argument("--finalize", action="store_true",
                    help="merge the balanced reference into out/scale.json, redo targets, plots, README")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--serve-child", nargs=3, metavar=("HOW", "PATH", "QUERIES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.serve_child:
        serve_child(*args.serve_child)
        return
    global BUDGET_B1_S, BUDGET_B256_S
    BUDGET_B1_S, BUDGET_B256_S = args.b1_budget, args.b256_budget
    memory_guard(args.min_free_gib)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    OUT.mkdir(exist_ok=True)
    B = Config.builtin("paper-amazon").beam.B

    def log(s: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True)

    if args.balanced_reference:  # a side file: a main run may be rewriting scale.json meanwhile
        side = OUT / "scale_balanced.json"
        refs = json.loads(side.read_text()) if side.is_file() else {}
        for V in sizes:
            refs[str(V)] = balanced_reference(V, args, log)
            side.write_text(json.dumps(refs, indent=1) + "\n")
        return
    if args.finalize:  # merge the side file, recompute the targets, plots and README section
        record = json.loads((OUT / "scale.json").read_text())
        side = OUT / "scale_balanced.json"
        refs = json.loads(side.read_text()) if side.is_file() else {}
        for rec in record["results"]:
            if str(rec["V"]) in refs:
                rec["dr_balanced_reference"] = refs[str(rec["V"])]
        record["targets"] = tg = targets(record["results"], B)
        (OUT / "scale.json").write_text(json.dumps(record, indent=1) + "\n")
        plots(record["results"], B)
        section = readme_section(record["results"], tg, args, B, record["command"])
        if not args.no_readme:
            with open(Path(__file__).parent / "README.md", "a") as f:
                f.write("\n" + section)
        print(section)
        return
    results: list[dict] = []
    if args.merge and (OUT / "scale.json").is_file():
        old = json.loads((OUT / "scale.json").read_text())
        results = [r for r in old["results"] if r["V"] not in sizes]
        command = f"{old['command']}; then {command}"
    for V in sizes:
        rec = run_size(V, args, log)
        work = Path(args.work) / f"V{V}"
        rec["serving"] = measure_serving_rss("model", work / "model", work / "queries.npy")
        rec["serving_retriever_only"] = measure_serving_rss("retriever", work / "retriever",
                                                            work / "queries.npy")
        log(f"V={V:,}: serving process {rec['serving']}, from saved Retriever "
            f"{rec['serving_retriever_only']}")
        results.append(rec)
        results.sort(key=lambda r: r["V"])
        hnsw_built = [r for r in results if "build_s" in r["hnsw"]]
        for r in results:  # HNSW build time estimate where skipped: n log n from the largest built
            if "skipped" in r["hnsw"] and hnsw_built:
                h = hnsw_built[-1]
                r["hnsw"]["build_s_estimate"] = h["hnsw"]["build_s"] * (r["V"] * np.log(r["V"])) / (
                    h["V"] * np.log(h["V"]))
        tg = targets(results, B)
        record = {
            "command": command, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "nproc": os.cpu_count(),
                        "processor": platform.processor()},
            "threads": 1, "topk": TOPK, "beam_B": B,
            "note": "latencies from precomputed user embeddings (encoder not timed); recall@200 vs the "
                    "exact top-200 over the same reranker item embeddings",
            "results": results, "targets": tg,
        }
        (OUT / "scale.json").write_text(json.dumps(record, indent=1) + "\n")
        plots(results, B)
        log(f"wrote {OUT / 'scale.json'}; targets so far: "
            f"{ {k: (round(v['value'], 4), v['met']) for k, v in tg.items() if 'value' in v} }")
    if not args.no_readme:
        with open(Path(__file__).parent / "README.md", "a") as f:
            f.write("\n" + readme_section(results, tg, args, B, command))
    print(readme_section(results, tg, args, B, command))


if __name__ == "__main__":
    main()
