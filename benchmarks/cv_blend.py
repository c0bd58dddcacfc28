"""Pick a blend scorer and a fixed (w, eps) by cross-validation over the NON-test users.

    python benchmarks/cv_blend.py DATA --config ml-small --scorer popularity:after=true \
        --scorer popularity --folds 3 --seeds 0,1,2 --out benchmarks/out/cv_blend_ml1m_sample

A data set with few validation users (the ml-1m sample: 500) picks w from noise. This pools
the training users' rows and the validation users' rows (history + truth, in order) and cuts
the pool into ``--folds`` folds (``--fold-seed``); each fold's users in turn are held out as
validation users (history = the first floor(n / 2) items, truth = the rest: the user-split
protocol) and DR (``--config`` with ``--set``) is trained on the others, once per seed.
Every (scorer, w, eps) is then scored on the held-out users with ``rerank.pick_blend`` (DR's
candidates at the config's B, ranked by its reranker + w log(score / |history| + eps)), and
the scorers alone over all items with ``evaluate``. Test users are never read.

Writes OUT.json (every fold, seed and point) and OUT.md (the mean recall@k over the folds and
seeds of each scorer alone and of each scorer's best fixed (w, eps), with the curve in w).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset, Ragged, Split
from deep_retrieval.evaluate import baseline, evaluate
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.rerank import pick_blend

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
EPS = (0.01, 0.1, 1.0)


def folds(ds: Dataset, n_folds: int, seed: int) -> list[Dataset]:
    """The fold data sets: train = the pool minus the fold, val = test = the fold (user-split)."""
    v = ds.val
    pool = [ds.train[i] for i in range(len(ds.train))] + [np.concatenate([v.hist[i], v.truth[i]])
                                                          for i in range(len(v))]
    users = np.concatenate([ds.train_users, ds.val.users])
    perm = np.random.default_rng(seed).permutation(len(pool))
    out = []
    for f in range(n_folds):
        held = np.sort(perm[f::n_folds])
        rest = np.setdiff1d(np.arange(len(pool)), held)
        val = Split(users[held], Ragged.from_lists([pool[i][: len(pool[i]) // 2] for i in held]),
                    Ragged.from_lists([pool[i][len(pool[i]) // 2 :] for i in held]))
        out.append(Dataset(ds.item_ids, ds.user_ids, Ragged.from_lists([pool[i] for i in rest]), users[rest],
                           val, val, dict(ds.manifest)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--scorer", action="append", required=True, help="a baseline as `dr evaluate` names it")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--fold-seed", type=int, default=1)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ds = Dataset.load(args.data)
    rows, t0 = [], time.perf_counter()
    for f, fd in enumerate(folds(ds, args.folds, args.fold_seed)):
        scorers = {s: baseline(s).fit(fd) for s in args.scorer}
        for r in evaluate(fd, scorers, [args.k], split="val", latency_users=0)["results"]:
            rows.append({"fold": f, "seed": None, "what": r["method"], "recall": r["recall"]})
        for seed in seeds:
            cfg = load_config(args.config, tuple(args.overrides))
            cfg.train.seed, cfg.train.progress = seed, False
            dr = DeepRetrieval(cfg.validate()).fit(fd, log=lambda *_: None)
            for name, sc in scorers.items():
                _, curve = pick_blend(dr, sc, fd, WEIGHTS, EPS, args.k)
                rows += [{"fold": f, "seed": seed, "what": f"dr+{name}", "w": c["w"], "eps": c["eps"],
                          "recall": c["recall"]} for c in curve]
            print(f"fold {f} seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    def mean(sel) -> float:
        return 100 * float(np.mean([r["recall"] for r in rows if sel(r)]))

    lines = [f"# Blend scorers by {args.folds}-fold cross-validation over the non-test users\n",
             f"`{Path(args.data).name}`, config {args.config} {' '.join(args.overrides)}, "
             f"seeds {args.seeds}; "
             f"recall@{args.k} in percent, mean over folds (and seeds); "
             f"{time.perf_counter() - t0:.0f} s.\n",
             "| what | recall | best fixed (w, eps) | " + " | ".join(f"w {w:g}" for w in WEIGHTS) + " |",
             "|---|---|---|" + "---|" * len(WEIGHTS)]
    summary = {}
    for name in args.scorer:
        alone = mean(lambda r, n=name: r["what"] == n)
        lines.append(f"| {name} alone | {alone:.2f} |" + " |" * (len(WEIGHTS) + 1))
        key = f"dr+{name}"
        grid = {(w, e): mean(lambda r, p=(key, w, e): (r["what"], r.get("w"), r.get("eps")) == p)
                for w in WEIGHTS for e in EPS}
        (bw, be), best = max(grid.items(), key=lambda kv: kv[1])
        curve = [grid[(w, be)] for w in WEIGHTS]
        cells = " | ".join(f"{c:.2f}" for c in curve)
        lines.append(f"| DR + {name} | {best:.2f} | ({bw:g}, {be:g}) | {cells} |")
        summary[name] = {"alone": alone, "best_w": bw, "best_eps": be, "best": best}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = {"args": vars(args), "summary": summary, "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(out) + "\n")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
