"""The M-step's score collection against the E-step, per example, in one process (issue 12).

    python benchmarks/bench_collect.py DATA [--config ml1m] [--examples 20480] [--threads 1]

Trains ``--examples`` examples (joint-phase E-step steps of the config's batch size) from a
fresh model, then runs one M-step over exactly those examples and reports seconds per 10^6
examples of each part. Target: score collection no slower than the E-step on the CPU.
Writes benchmarks/out/collect.json and collect.md.
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
from deep_retrieval.examples import Examples
from deep_retrieval.state import TrainState
from deep_retrieval.train import _e_step, m_step, window_examples

OUT = Path(__file__).parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--config", default="ml1m")
    ap.add_argument("--examples", type=int, default=20480)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = Dataset.load(args.data)
    cfg = load_config(args.config, ["train.progress=false", f'train.device="{args.device}"',
                                    f"train.threads={args.threads}"])
    state = TrainState.new(cfg, ds)
    ex = Examples(ds, cfg.encoder.max_seq_len, cfg.train.context)
    idx = np.random.default_rng(0).permutation(len(ex))[: args.examples]
    batches = np.array_split(idx, max(1, len(idx) // cfg.train.batch_size))
    t = time.perf_counter()
    for b in batches:
        _e_step(state, ex, b, joint=True)
    e_step = time.perf_counter() - t
    info = m_step(state, ex, *window_examples(ex, batches, ds.n_items))
    per = 1e6 / len(idx)
    res = {"data": args.data, "config": args.config, "examples": len(idx), "threads": args.threads,
           "device": args.device, "seconds_per_1e6": {
               "e_step": e_step * per, "score_collection": info["seconds_score_collection"] * per,
               "coordinate_descent_window": info["seconds_coordinate_descent"]},
           "ratio_collection_over_e_step": info["seconds_score_collection"] / e_step}
    OUT.mkdir(exist_ok=True)
    (OUT / "collect.json").write_text(json.dumps(res, indent=1) + "\n")
    s = res["seconds_per_1e6"]
    cmd = (f"python benchmarks/bench_collect.py {args.data} --config {args.config} "
           f"--examples {args.examples} --threads {args.threads} --device {args.device}")
    md = (f"# Score collection vs E-step\n\n`{cmd}`\n\n"
          f"| part | seconds per 10^6 examples |\n|---|---|\n| E-step (joint) | {s['e_step']:.1f} |\n"
          f"| score collection (beam S = {cfg.em.S}) | {s['score_collection']:.1f} |\n\n"
          f"Collection / E-step = {res['ratio_collection_over_e_step']:.2f} (target <= 1); coordinate "
          f"descent over the window {s['coordinate_descent_window']:.2f} s.\n")
    (OUT / "collect.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
