"""Latency of beam_search at batch 1 and batch 256 (K=100, D=3, B=50, e=64, hidden (256,)).

Medians over repeated calls, with the node tables computed inside every call (the
default) and precomputed once (a server's setting), next to a plain reference in the
same run: the same algorithm feeding the full concatenated input of every beam through
``layer_logprobs``. Writes benchmarks/out/beam.json.

    python benchmarks/bench_beam.py [--threads N (default 1)] [--reps R]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from deep_retrieval.beam import beam_search
from deep_retrieval.config import StructureConfig
from deep_retrieval.structure import StructureModel

K, D, B, E, HIDDEN = 100, 3, 50, 64, (256,)


@torch.no_grad()
def plain_beam_search(model: StructureModel, u: torch.Tensor, B: int):
    """Reference: Algorithm 1 with the whole MLP input built for every beam."""
    n, e = u.shape
    cum, node = model.layer_logprobs(u, u.new_zeros(n, 0, dtype=torch.long)).topk(min(B, K))
    paths = node.unsqueeze(2)  # (n, b, 1)
    for d in range(1, D):
        b = paths.shape[1]
        uu = u.unsqueeze(1).expand(n, b, e).reshape(n * b, e)  # (n*b, e)
        logp = model.layer_logprobs(uu, paths.reshape(n * b, d)).view(n, b, K)  # (n, b, K)
        cum, idx = (cum.unsqueeze(2) + logp).view(n, b * K).topk(min(B, b * K))  # (n, b')
        parent, node = idx // K, idx % K  # (n, b')
        prefix = paths.gather(1, parent.unsqueeze(2).expand(-1, -1, d))  # (n, b', d)
        paths = torch.cat([prefix, node.unsqueeze(2)], dim=2)  # (n, b', d+1)
    return paths, cum


def interleaved_medians_ms(fns: dict, reps: int, warmup: int = 10) -> dict:
    """Median ms of each function, timed round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0 = torch's default; 1 is "
        "steadier on a shared machine, where spinning worker threads can cost 10x at batch 1)",
    )
    ap.add_argument("--reps", type=int, default=300, help="calls timed at batch 1")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = StructureModel(StructureConfig(K=K, D=D, hidden=HIDDEN), E).eval()
    with torch.no_grad():
        tables = model.prefix_tables()

    results = []
    for batch, reps in ((1, args.reps), (256, max(args.reps // 15, 5))):
        u = torch.randn(batch, E)
        torch.testing.assert_close(plain_beam_search(model, u, B)[1], beam_search(model, u, B)[1])
        fns = {
            "plain reference": lambda u=u: plain_beam_search(model, u, B),
            "tables per call": lambda u=u: beam_search(model, u, B),
            "tables precomputed": lambda u=u: beam_search(model, u, B, tables),
        }
        for how, ms in interleaved_medians_ms(fns, reps).items():
            results.append(
                {
                    "batch": batch,
                    "variant": how,
                    "median_ms": round(ms, 4),
                    "ms_per_user": round(ms / batch, 4),
                    "reps": reps,
                }
            )
            print(f"batch {batch:4d}  {how:18s}  {ms:9.3f} ms  {ms / batch:7.4f} ms/user")

    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    record = {
        "setting": {"K": K, "D": D, "B": B, "e": E, "hidden": list(HIDDEN)},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    (out / "beam.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out / 'beam.json'}")


if __name__ == "__main__":
    main()
