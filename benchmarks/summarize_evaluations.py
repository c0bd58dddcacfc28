"""Mean ± std (ddof 1) over several `dr evaluate --json` files, one per seed.

    python benchmarks/summarize_evaluations.py results/amazon-book-blend-b800/seed*.json

Prints one row per (method, k) in percent with the per-seed values, and the ratios of DR to
its own reranker by brute force and of DR + blend to the blend by brute force, per seed.
"""

import json
import sys

import numpy as np


def main(files: list[str]) -> None:
    rows: dict[tuple[str, int], list[dict]] = {}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for r in json.load(fh)["results"]:
                rows.setdefault((r["method"], r["k"]), []).append(r)
    print(f"{len(files)} evaluations: {' '.join(files)}")

    def cell(rs, key):
        v = np.array([r[key] for r in rs]) * 100
        return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"

    for (m, k), rs in rows.items():
        items = np.mean([r["items_scored_per_user"] for r in rs])
        print(f"{m:12s} @{k:<4d} P {cell(rs, 'precision')}  R {cell(rs, 'recall')}  F {cell(rs, 'f1')}  "
              f"NDCG {cell(rs, 'ndcg')}  items {items:,.0f}  (n = {len(rs)}; R per seed "
              f"{[round(100 * r['recall'], 2) for r in rs]}, NDCG {[round(100 * r['ndcg'], 2) for r in rs]})")
    for num, den in (("dr", "brute-force"), ("dr+blend", "blend")):
        for k in sorted({k for _, k in rows}):
            if (num, k) in rows and (den, k) in rows:
                ratio = np.array([r["recall"] for r in rows[(num, k)]]) / np.array(
                    [r["recall"] for r in rows[(den, k)]])
                print(f"{num} / {den} recall @{k}: {np.round(ratio, 3).tolist()}, mean {ratio.mean():.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
