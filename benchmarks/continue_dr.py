"""More DR-only epochs (phase 2: the reranker frozen) on a trained model, saving it after each.

    python benchmarks/continue_dr.py MODEL DATA --epochs N --out DIR [--set train.distill=50]
        [--set table.key=value ...] [--seed 100]

Each epoch trains the structure model on DATA's training rows and ends with an M-step, as the
DR-only epochs of ``dr train`` do (``train.train`` with ``epochs_joint = 0, epochs_dr = 1``,
fresh optimisers); ``--set`` changes the model's config for these epochs (e.g.
``train.distill``, ``em.S``), and the saved models carry that config. The model after epoch i
is written to DIR/e<i> (a new folder: DIR must not exist). The blend, if any, is kept as it was
picked (the reranker does not change). Used for docs/results.md's "structure model learns
the reranker's top items" section: it turns a model trained without ``train.distill`` into
one whose last DR-only epochs had it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deep_retrieval.config import with_overrides
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.state import TrainState, make_optimizers, resolve_device
from deep_retrieval.train import train


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="table.key=value")
    ap.add_argument("--seed", type=int, default=100, help="the epochs' permutations: seed + epoch")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        fail(f"{out} exists; pick a new folder")
    if a.epochs < 1:
        fail("--epochs must be >= 1")
    m = DeepRetrieval.load(a.model)
    ds = Dataset.load(a.data)
    cfg = with_overrides(m.config, a.sets)
    run = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs_joint=0, epochs_dr=1))
    run.validate()
    device = resolve_device(run.train.device)
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    m.net.to(device)
    for e in range(1, a.epochs + 1):
        t = time.perf_counter()
        state = TrainState(run, m.net, make_optimizers(m.net, run.train.lr, run.train.weight_decay),
                           m.assignment.copy(), m.scores, np.random.default_rng(a.seed + e), device)
        train(state, ds)
        log = m.log
        m._adopt(state, ds.item_ids)
        m.log = [*log, *({**entry, "continued": True} for entry in state.log)]
        m.config = cfg
        m.net.cpu()
        m.save(out / f"e{e}")
        m.net.to(device)
        print(f"DR-only epoch {e}: {time.perf_counter() - t:.0f} s, saved {out / f'e{e}'}", flush=True)


if __name__ == "__main__":
    main()
