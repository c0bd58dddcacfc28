"""The M-step's score collection against the E-step, per example, in one process (issue 12).

    python benchmarks/bench_collect.py DATA [--config ml1m] [--examples 20480] [--threads 1]
        [--device cpu] [--set TABLE.KEY=VALUE ...] [--warmup 0] [--out benchmarks/out/collect.json]
    python benchmarks/bench_collect.py --synth-items 1000000 --config paper-amazon \
        --set encoder.kind=mean --set train.batch_size=4096 --examples 1000000 --device cuda

Trains ``--examples`` examples (joint-phase E-step steps of the config's batch size) from a
fresh model, then runs one M-step over exactly those examples and reports seconds per 10^6
examples of each part, and examples per second. ``--warmup`` untimed steps come first (on a
GPU the first steps allocate and pick kernels). ``--synth-items N`` replaces DATA by
``dr synth``'s personal preset at N items (N / 5 users, 50 interactions each), generated in
memory. ``--tf32`` lets CUDA's fp32 matmuls use TF32 (to measure what it would buy).
Targets: score collection no slower than the E-step on the CPU; on a GPU at 10^6 items
>= 200k examples/s E-step and >= 500k score collection. Writes ``--out`` (JSON) and the same
name with ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.data.synth import SynthConfig, generate
from deep_retrieval.examples import Examples
from deep_retrieval.state import TrainState
from deep_retrieval.train import _e_step, m_step, window_examples

OUT = Path(__file__).parent / "out"


def sync() -> None:
    """Wait for queued GPU work, so that wall time is the work's (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="a prepared data set (or --synth-items)")
    ap.add_argument("--synth-items", type=int, default=0, help="personal synthetic data of this many items")
    ap.add_argument("--config", default="ml1m")
    ap.add_argument("--examples", type=int, default=20480)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    ap.add_argument("--warmup", type=int, default=0, help="untimed E-step batches first")
    ap.add_argument("--out", default=str(OUT / "collect.json"))
    ap.add_argument("--tf32", action="store_true",
                    help="let CUDA fp32 matmuls use TF32 (process-wide; the library never sets it)")
    args = ap.parse_args()
    if (args.data is None) == (args.synth_items == 0):
        ap.error("give exactly one of DATA and --synth-items")
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    t = time.perf_counter()
    if args.synth_items:
        ds, _ = generate(SynthConfig.personal(n_items=args.synth_items))
        args.data = f"synth personal {args.synth_items}"
    else:
        ds = Dataset.load(args.data)
    t_data = time.perf_counter() - t
    cfg = load_config(args.config, ["train.progress=false", f'train.device="{args.device}"',
                                    f"train.threads={args.threads}", *args.overrides])
    state = TrainState.new(cfg, ds)
    ex = Examples(ds, cfg.encoder.max_seq_len, cfg.train.context)
    idx = np.random.default_rng(0).permutation(len(ex))[: args.examples]
    batches = np.array_split(idx, max(1, len(idx) // cfg.train.batch_size))
    rng = np.random.default_rng(1)
    for _ in range(args.warmup):  # not timed, not in the M-step's window
        _e_step(state, ex, rng.integers(0, len(ex), cfg.train.batch_size), joint=True)
    sync()
    t = time.perf_counter()
    for b in batches:
        _e_step(state, ex, b, joint=True)
    sync()
    e_step = time.perf_counter() - t
    info = m_step(state, ex, *window_examples(ex, batches, ds.n_items))
    per = 1e6 / len(idx)
    res = {"data": args.data, "config": args.config, "overrides": args.overrides, "examples": len(idx),
           "batch_size": cfg.train.batch_size, "threads": args.threads, "device": args.device,
           "tf32": args.tf32,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "seconds_data": t_data, "seconds_per_1e6": {
               "e_step": e_step * per, "score_collection": info["seconds_score_collection"] * per,
               "coordinate_descent_window": info["seconds_coordinate_descent"]},
           "examples_per_s": {"e_step": len(idx) / e_step,
                              "score_collection": len(idx) / info["seconds_score_collection"]},
           "ratio_collection_over_e_step": info["seconds_score_collection"] / e_step}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    s = res["seconds_per_1e6"]
    sets = "".join(f" --set {o}" for o in args.overrides)
    src = f"--synth-items {args.synth_items}" if args.synth_items else args.data
    cmd = (f"python benchmarks/bench_collect.py {src} --config {args.config}{sets} "
           f"--examples {args.examples} --threads {args.threads} --device {args.device} "
           f"--warmup {args.warmup}{' --tf32' if args.tf32 else ''}")
    md = (f"# Score collection vs E-step\n\n`{cmd}`\n\n"
          f"| part | seconds per 10^6 examples |\n|---|---|\n| E-step (joint) | {s['e_step']:.1f} |\n"
          f"| score collection (beam S = {cfg.em.S}) | {s['score_collection']:.1f} |\n\n"
          f"Collection / E-step = {res['ratio_collection_over_e_step']:.2f} (target <= 1); coordinate "
          f"descent over the window {s['coordinate_descent_window']:.2f} s. Examples/s: E-step "
          f"{res['examples_per_s']['e_step']:,.0f}, score collection "
          f"{res['examples_per_s']['score_collection']:,.0f} ({res['device_name']}).\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
