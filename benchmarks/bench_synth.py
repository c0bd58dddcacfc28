"""Benchmark: generate and write the Amazon-Books-sized synthetic set (1.5M items, 300k users,
10M interactions) and measure wall time and peak RSS against the targets (< 120 s, < 4 GiB).

    python benchmarks/bench_synth.py [--seed 0]

The generation runs in a child process so that its peak RSS is measured alone
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Writes ``benchmarks/out/synth.json`` and
appends a section to ``benchmarks/README.md``.
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
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_S, TARGET_GIB = 120.0, 4.0

CHILD = """
import json, sys, time
from deep_retrieval.data.synth import SynthConfig, synth
cfg = SynthConfig.large(seed=int(sys.argv[2]))
t0 = time.perf_counter()
ds = synth(sys.argv[1], cfg, log=lambda m: print(m, file=sys.stderr))
print(json.dumps({"seconds": time.perf_counter() - t0, "counts": ds.manifest["counts"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        out = Path(tmp) / "synth"
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(out), str(args.seed)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in out.iterdir())
    child = json.loads(res.stdout.strip().splitlines()[-1])
    rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux

    c = child["counts"]
    result = {
        "benchmark": "synth",
        "command": f"python benchmarks/bench_synth.py --seed {args.seed}",
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "nproc": os.cpu_count(),
        "config": "SynthConfig.large(): 1.5M items, 300k users, 10M interactions (target)",
        "wall_s_process": round(wall, 1),
        "wall_s_synth": round(child["seconds"], 1),
        "peak_rss_gib": round(rss_gib, 2),
        "disk_mib": round(disk / 2**20, 1),
        "interactions": c["interactions"],
        "items_with_interactions": c["items_with_interactions"],
        "mean_seq_len": round(c["mean_seq_len"], 2),
        "targets": {"wall_s": TARGET_S, "peak_rss_gib": TARGET_GIB},
        "pass": wall < TARGET_S and rss_gib < TARGET_GIB,
    }
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "synth.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))

    readme = HERE / "README.md"
    if not readme.exists():
        readme.write_text("# Benchmarks\n\nEach script appends its own section below.\n")
    with readme.open("a") as f:
        f.write(
            f"\n## Synthetic generation at Amazon-Books size ({result['date']})\n\n"
            f"`{result['command']}` on {result['machine']}, nproc {result['nproc']}.\n\n"
            "| what | figure | target |\n|---|---|---|\n"
            f"| wall time, generate + write (child process incl. start-up) "
            f"| {result['wall_s_process']} s | < {TARGET_S:.0f} s |\n"
            f"| peak RSS | {result['peak_rss_gib']} GiB | < {TARGET_GIB:.0f} GiB |\n"
            f"| interactions written | {result['interactions']:,} | 10,000,000 (target) |\n"
            f"| items with interactions | {result['items_with_interactions']:,} of 1,500,000 | |\n"
            f"| mean sequence length | {result['mean_seq_len']} | |\n"
            f"| data set on disk | {result['disk_mib']} MiB | |\n"
        )


if __name__ == "__main__":
    main()
