"""M-step speed: collect_scores and coordinate_descent on synthetic skewed scores.

    python benchmarks/bench_mstep.py [--sizes 1000000 10000000] [--S 25 50]

Each (V, S) runs in a child process (peak RSS = that child's ru_maxrss). Candidates
per item are S distinct paths around a Zipf-distributed centre over K^D = 10^6
paths, scores decrease along the row, N_v is Pareto-distributed. collect_scores is
timed on N = 10^6 examples x S' = S beam paths (Zipf targets over the V items).
Writes benchmarks/out/mstep.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_PATHS = 10**6
J, T, ALPHA, POWER = 3, 3, 1e-6, 4.0
N_COLLECT = 10**6
BLOCK = 10**6


def zipf_ids(rng, n, size, a=1.2):
    """Ids in [0, n) with P(rank r) ~ r^-a, scattered by a fixed permutation."""
    r = np.minimum(rng.zipf(a, size) - 1, n - 1)
    return (r * 7919 + 13) % n  # 7919 is prime, coprime with 10^6: a bijection


def synthetic_table(rng, V, S):
    from deep_retrieval.mstep import ScoreTable

    t = ScoreTable(np.empty((V, S), dtype=np.int64), np.empty((V, S), dtype=np.float32))
    step = np.arange(S, dtype=np.int64) * 104729  # distinct offsets mod 10^6 for S <= 50
    for lo in range(0, V, BLOCK):
        n = min(BLOCK, V - lo)
        t.paths[lo : lo + n] = (zipf_ids(rng, N_PATHS, n)[:, None] + step) % N_PATHS
        t.scores[lo : lo + n] = np.exp(-np.cumsum(rng.exponential(0.3, (n, S)), axis=1))
    return t


def run_one(V: int, S: int) -> dict:
    from deep_retrieval.mstep import ScoreTable, collect_scores, coordinate_descent
    from deep_retrieval.paths import path_stats, random_assignment

    rng = np.random.default_rng(0)
    out = {"V": V, "S": S, "J": J, "T": T, "alpha": ALPHA, "n_paths": N_PATHS}
    # collect_scores on N_COLLECT examples
    targets = zipf_ids(rng, V, N_COLLECT, 1.1)
    paths = (zipf_ids(rng, N_PATHS, N_COLLECT)[:, None] + np.arange(S) * 104729) % N_PATHS
    probs = rng.random((N_COLLECT, S)).astype(np.float32)
    t0 = time.perf_counter()
    collect_scores(targets, paths, probs, V, S)
    out["collect_s"] = time.perf_counter() - t0
    out["collect_examples"] = N_COLLECT
    out["collect_entries_per_s"] = N_COLLECT * S / out["collect_s"]
    del targets, paths, probs
    # coordinate descent
    table = synthetic_table(rng, V, S)
    N_v = (1 + rng.pareto(1.2, V)).astype(np.int64)
    prev = random_assignment(V, J, N_PATHS, rng)
    small = ScoreTable(table.paths[:10], table.scores[:10])
    coordinate_descent(small, N_v[:10], prev[:10], J, ALPHA, POWER, 1, rng)  # warm the cache
    t0 = time.perf_counter()
    pi = coordinate_descent(table, N_v, prev, J, ALPHA, POWER, T, rng)
    out["cd_s"] = time.perf_counter() - t0
    out["cd_items_per_s"] = V / out["cd_s"]
    st = path_stats(pi, N_PATHS)
    out["largest_path"], out["non_empty_paths"] = st["largest"], st["non_empty"]
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7])
    ap.add_argument("--S", type=int, nargs="+", default=[25, 50])
    ap.add_argument("--one", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    rows = []
    for V in args.sizes:
        for S in args.S:
            r = subprocess.run([sys.executable, __file__, "--one", str(V), str(S)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                rows.append({"V": V, "S": S, "error": r.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "mstep.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| V | S | collect 10^6 ex. (s) | entries/s | CD J=3 T=3 (s) | items/s "
          "| largest path | peak RSS (GiB) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['V']:.0e} | {r['S']} | failed: {r['error']} |")
            continue
        print(f"| {r['V']:.0e} | {r['S']} | {r['collect_s']:.1f} | "
              f"{r['collect_entries_per_s']:.2e} | {r['cd_s']:.1f} | {r['cd_items_per_s']:.2e} | "
              f"{r['largest_path']} | {r['peak_rss_gib']:.1f} |")


if __name__ == "__main__":
    main()
