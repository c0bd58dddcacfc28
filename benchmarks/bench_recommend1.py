"""One user's `recommend`, end to end, with and without the model's blend.

    python benchmarks/bench_recommend1.py MODEL DATA [--users 200] [--k 20] [--rounds 3]
        [--out benchmarks/out/recommend1.json]

``MODEL`` a trained model directory (with a blend: ``dr train`` with ``[blend]``, ``dr blend``, or
``dr demo``'s ``model/``), ``DATA`` the prepared data set it was trained on. For each of the first
``--users`` test users (history items excluded, as ``dr evaluate --exclude-history``), one
``model.recommend`` call of that user alone: the encoder, the beam, the candidates, the rerank
and, with ``blend=True``, the blend's score of every candidate (as ``dr serve`` answers one
request). The median per setting and round, in turns in the same process; writes the JSON and
a markdown line next to it. One thread (set before numpy loads). Run it under
``PYTHONPATH=<other checkout>/src`` to compare two versions of the code on the same model.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import deep_retrieval  # noqa: E402
from deep_retrieval.data.dataset import Dataset  # noqa: E402
from deep_retrieval.model import DeepRetrieval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/out/recommend1.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m, ds = DeepRetrieval.load(a.model), Dataset.load(a.data)
    if m.blend_scorer is None:
        raise SystemExit(f"{a.model} carries no blend (w = 0 or none fitted): nothing to compare")
    hist = ds.test.hist
    rows = [hist.take(np.array([i])) for i in range(min(a.users, len(hist)))]
    m.recommend(rows[0], a.k, True)  # compile the kernels once
    runs: dict[str, list[float]] = {"blend": [], "own reranker": []}
    for _ in range(a.rounds):
        for name, blend in (("blend", True), ("own reranker", False)):
            t = []
            for row in rows:
                t0 = time.perf_counter()
                m.recommend(row, a.k, True, blend=blend)
                t.append(time.perf_counter() - t0)
            runs[name].append(float(np.median(t) * 1e3))
    out = {"model": a.model, "data": a.data, "code": str(Path(deep_retrieval.__file__).parent),
           "users": len(rows), "k": a.k, "B": m.config.beam.B, "blend": m.blend["scorer"],
           "median_ms_per_round": runs}
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    line = "; ".join(f"{n} {' / '.join(f'{x:.2f}' for x in v)} ms" for n, v in runs.items())
    head = f"`recommend` of one user, {a.model} (B = {m.config.beam.B}, k = {a.k}, {len(rows)} test users"
    path.with_suffix(".md").write_text(f"{head}, medians per round): {line}\n")
    print(line)


if __name__ == "__main__":
    main()
