"""M-step speed and memory at V = 10^6 and 10^7 items, for the S values the configs ship.

    python benchmarks/bench_mstep.py [--sizes 1000000 10000000] [--S 25 50]
                                     [--beam-examples 20000] [--no-readme]

S = 50 is ``paper-amazon`` (K = 100, D = 3) and S = 25 is ``ml1m`` (K = 50, D = 3); each
(V, S) runs in a child process, one after the other, and reports its own peak RSS
(``ru_maxrss``, after each phase: the peak so far) and, through psutil, the machine's
available memory. Phases, as train.py's ``m_step`` runs them:

1. score collection: beam search of width S with a real (randomly initialised)
   StructureModel of that config over ``--beam-examples`` examples in batches of
   ``train.SCORE_BATCH`` (user embeddings drawn N(0, 1): the encoder is E-step cost, not
   timed here); then ``collect_scores`` over 10^6 examples (the beam's (path, p) rows
   repeated, targets Zipf over the V items) and ``streaming_update`` of a full (V, S)
   table with that result (eta of the config). If the machine lacks the memory for
   the three (V, S) tables the update holds at once, the update runs on the first rows
   only and its time is scaled to V (marked ``streaming_rows``).
2. penalised coordinate descent, J = 3, T = 3, on a synthetic skewed table: S distinct
   candidates per item around a Zipf-popular centre over 10^6 paths, scores decreasing
   along the row, N_v Pareto, alpha = 1e-6 (the setting of the earlier runs, so the
   figures compare). The numba kernel is sequential: it uses one core. Then the same
   again with ``explore=True`` (``em.explore``, on in ``paper-amazon``).

Writes benchmarks/out/mstep.json, prints a markdown table and appends a section to
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_PATHS = 10**6
J, T, ALPHA, POWER = 3, 3, 1e-6, 4.0
N_COLLECT = 10**6
BLOCK = 10**6
CD_TARGET_S = 60.0  # coordinate descent over 10^7 items
CONFIG_OF_S = {50: "paper-amazon", 25: "ml1m"}


def zipf_ids(rng, n, size, a=1.2):
    """Ids in [0, n) with P(rank r) ~ r^-a, scattered by a fixed permutation."""
    r = np.minimum(rng.zipf(a, size) - 1, n - 1)
    return (r * 7919 + 13) % n  # 7919 is prime, coprime with 10^6 and 10^7: a bijection


def synthetic_table(rng, V, S):
    from deep_retrieval.mstep import ScoreTable

    t = ScoreTable(np.empty((V, S), dtype=np.int64), np.empty((V, S), dtype=np.float32))
    step = np.arange(S, dtype=np.int64) * 104729  # distinct offsets mod 10^6 for S <= 50
    for lo in range(0, V, BLOCK):
        n = min(BLOCK, V - lo)
        t.paths[lo : lo + n] = (zipf_ids(rng, N_PATHS, n)[:, None] + step) % N_PATHS
        t.scores[lo : lo + n] = np.exp(-np.cumsum(rng.exponential(0.3, (n, S)), axis=1))
    return t


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_one(V: int, S: int, n_beam: int) -> dict:
    import psutil
    import torch

    from deep_retrieval.beam import beam_search
    from deep_retrieval.config import Config
    from deep_retrieval.mstep import ScoreTable, collect_scores, coordinate_descent, streaming_update
    from deep_retrieval.paths import path_stats, random_assignment
    from deep_retrieval.structure import StructureModel, to_flat
    from deep_retrieval.train import SCORE_BATCH

    cfg = Config.builtin(CONFIG_OF_S[S])
    K, D = cfg.structure.K, cfg.structure.D
    rng = np.random.default_rng(0)
    out = {"V": V, "S": S, "config": CONFIG_OF_S[S], "K": K, "D": D, "J": J, "T": T,
           "alpha": ALPHA, "n_paths_cd": N_PATHS, "torch_threads": torch.get_num_threads()}

    # 1a. beam search of width S with a real structure model
    torch.manual_seed(0)
    model = StructureModel(cfg.structure, cfg.encoder.e).eval()
    flat_parts, prob_parts = [], []
    with torch.no_grad():
        tables = model.prefix_tables()
        beam_search(model, torch.randn(8, cfg.encoder.e), S, tables)  # warm-up
        t0 = time.perf_counter()
        for lo in range(0, n_beam, SCORE_BATCH):
            u = torch.randn(min(SCORE_BATCH, n_beam - lo), cfg.encoder.e)
            paths, logp = beam_search(model, u, S, tables)  # (b, S, D), (b, S)
            flat_parts.append(to_flat(paths, K).numpy())
            prob_parts.append(logp.exp().numpy())
        out["beam_s"] = time.perf_counter() - t0
    out["beam_examples"] = n_beam
    out["beam_examples_per_s"] = n_beam / out["beam_s"]
    # 1b. collect_scores over N_COLLECT examples (the beam's rows repeated)
    flat = np.resize(np.concatenate(flat_parts), (N_COLLECT, S))
    probs = np.resize(np.concatenate(prob_parts), (N_COLLECT, S))
    targets = zipf_ids(rng, V, N_COLLECT, 1.1)
    del flat_parts, prob_parts
    t0, c0 = time.perf_counter(), time.process_time()
    new = collect_scores(targets, flat, probs, V, S)
    out["collect_s"] = time.perf_counter() - t0
    out["collect_cpu_s"] = time.process_time() - c0
    out["collect_examples"] = N_COLLECT
    out["collect_entries_per_s"] = N_COLLECT * S / out["collect_s"]
    out["items_with_new_scores"] = int((new.paths[:, 0] >= 0).sum())
    del targets, flat, probs
    out["peak_rss_gib_after_collect"] = peak_gib()
    # 1c. streaming update of a full (V, S) table with the collected one
    old = synthetic_table(rng, V, S)
    table_gib = V * S * 12 / 2**30  # one (V, S) table: int64 paths + float32 scores
    avail = psutil.virtual_memory().available / 2**30
    rows = V  # the update holds old, new and the result: ~3 tables, 2 already resident
    if avail < 1.3 * table_gib + 2:
        rows = max(BLOCK, int(V * (avail - 2) / (1.3 * table_gib)) // BLOCK * BLOCK)
    t0 = time.perf_counter()
    if rows == V:
        upd = streaming_update(old, new, cfg.em.eta)
    else:
        upd = streaming_update(ScoreTable(old.paths[:rows], old.scores[:rows]),
                               ScoreTable(new.paths[:rows], new.scores[:rows]), cfg.em.eta)
    dt = time.perf_counter() - t0
    out["streaming_s"] = dt * V / rows
    out["streaming_rows"] = rows
    out["streaming_items_per_s"] = rows / dt
    out["available_gib_before_streaming"] = avail
    del upd, new
    out["peak_rss_gib_after_streaming"] = peak_gib()
    out["score_collection_s_per_1e6_examples"] = (
        10**6 / out["beam_examples_per_s"] + out["collect_s"] + out["streaming_s"]
    )

    # 2. coordinate descent
    N_v = (1 + rng.pareto(1.2, V)).astype(np.int64)
    prev = random_assignment(V, J, N_PATHS, rng)
    small = ScoreTable(old.paths[:10], old.scores[:10])
    coordinate_descent(small, N_v[:10], prev[:10], J, ALPHA, POWER, 1, rng)  # numba cache warm
    t0, c0 = time.perf_counter(), time.process_time()
    pi = coordinate_descent(old, N_v, prev, J, ALPHA, POWER, T, rng)
    out["cd_s"] = time.perf_counter() - t0
    out["cd_cpu_s"] = time.process_time() - c0  # < cd_s when other jobs took the core
    out["cd_items_per_s"] = V / out["cd_s"]
    st = path_stats(pi, N_PATHS)
    out["largest_path"], out["non_empty_paths"] = st["largest"], st["non_empty"]
    del pi
    # the same with em.explore (paper-amazon ships it): previous paths as extra candidates
    t0, c0 = time.perf_counter(), time.process_time()
    pi = coordinate_descent(old, N_v, prev, J, ALPHA, POWER, T, rng, explore=True)
    out["cd_explore_s"] = time.perf_counter() - t0
    out["cd_explore_cpu_s"] = time.process_time() - c0
    st = path_stats(pi, N_PATHS)
    out["largest_path_explore"], out["non_empty_paths_explore"] = st["largest"], st["non_empty"]
    out["peak_rss_gib"] = peak_gib()
    return out


def fmt_v(V: int) -> str:
    e = round(np.log10(V))
    return f"10^{e}" if 10**e == V else f"{V:,}"


def write_readme(rows: list[dict], command: str, machine: str, date: str, load: str) -> None:
    ok = [r for r in rows if "error" not in r]
    lines = [
        f"\n## M-step at 10^6 and 10^7 items ({date})\n",
        f"`{command}` on {machine}; 1-minute load average {load}, the machine being shared "
        "with other jobs: wall times are upper bounds (CD CPU = the process's CPU time). Each "
        "(V, S) ran in its own child process.\n",
        "Score collection: beam search of width S (random StructureModel of the config, "
        "1 torch thread) over the beam examples, `collect_scores` over 10^6 examples, "
        "`streaming_update` of a full (V, S) table; per 10^6 examples = 10^6 / beam rate + "
        "collect + update. Coordinate descent: J = 3, T = 3, "
        "alpha = 1e-6, 10^6 paths, skewed synthetic candidates (the earlier runs' setting).\n",
        "| V | S (config) | beam ex./s | collect 10^6 ex. (s) | streaming update (s) "
        "| score collection per 10^6 ex. (s) | CD (s) | CD CPU (s) | CD items/s "
        "| CD with em.explore (s) | peak RSS collect / update / CD (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {fmt_v(r['V'])} | {r['S']} | failed: {r['error']} ||||||||")
            continue
        scaled = "" if r["streaming_rows"] == r["V"] else f" (scaled from {r['streaming_rows']:,} rows)"
        lines.append(
            f"| {fmt_v(r['V'])} | {r['S']} ({r['config']}) | {r['beam_examples_per_s']:,.0f} | "
            f"{r['collect_s']:.1f} | {r['streaming_s']:.1f}{scaled} | "
            f"{r['score_collection_s_per_1e6_examples']:.0f} | {r['cd_s']:.1f} | {r['cd_cpu_s']:.1f} | "
            f"{r['cd_items_per_s']:,.0f} | {r['cd_explore_s']:.1f} | {r['peak_rss_gib_after_collect']:.1f} / "
            f"{r['peak_rss_gib_after_streaming']:.1f} / {r['peak_rss_gib']:.1f} |"
        )
    lines.append("")
    for r in ok:
        if r["V"] == 10**7:
            met = "met" if r["cd_s"] < CD_TARGET_S else "MISSED"
            lines.append(f"- target: coordinate descent over 10^7 items < {CD_TARGET_S:.0f} s at "
                         f"S = {r['S']}: {met} ({r['cd_s']:.1f} s wall, {r['cd_cpu_s']:.1f} s CPU; "
                         f"with em.explore {r['cd_explore_s']:.1f} s wall, "
                         f"{r['cd_explore_cpu_s']:.1f} s CPU)")
    with open(HERE / "README.md", "a") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7])
    ap.add_argument("--S", type=int, nargs="+", default=[25, 50], choices=sorted(CONFIG_OF_S))
    ap.add_argument("--beam-examples", type=int, default=20_000)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--one", type=int, nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(run_one(*args.one)))
        return
    rows, loads = [], [os.getloadavg()[0]]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    for V in args.sizes:
        for S in args.S:
            r = subprocess.run([sys.executable, __file__, "--one", str(V), str(S), str(args.beam_examples)],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                rows.append({"V": V, "S": S, "error": " ".join(r.stderr.strip().splitlines()[-1:])})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
            loads.append(os.getloadavg()[0])
    date = datetime.date.today().isoformat()
    machine = f"{platform.platform()}, nproc {os.cpu_count()}"
    command = "python benchmarks/bench_mstep.py " + " ".join(sys.argv[1:])
    load = f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "mstep.json").write_text(json.dumps(
        {"benchmark": "mstep", "date": date, "machine": machine, "command": command.strip(),
         "load_average_1min": loads, "cd_target_s_at_1e7": CD_TARGET_S, "rows": rows}, indent=2) + "\n")
    if not args.no_readme:
        write_readme(rows, command.strip(), machine, date, load)
    print(f"wrote {HERE / 'out' / 'mstep.json'}")


if __name__ == "__main__":
    main()
