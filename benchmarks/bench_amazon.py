"""Amazon-book (KGAT split) with the amazon-book config: DR and its reranker by brute force, N seeds.

    python benchmarks/bench_amazon.py [--data-root ../shared/data] [--work /tmp/dr-amazon-5k]
        [--seeds 0,1,2,3,4] [--config amazon-book] [--set TABLE.KEY=VALUE ...] [--name amazon]
        [--val-users 5000]

Prepares the KGAT split once (``given-split``, ``--val-users`` validation users drawn from the
training users, each holding out 20% of their training items: 5,000 as
``experiments/amazon-book.toml``; with 1,000 early stopping was too noisy) into ``--work``,
then for every seed trains DR (early stopping on the validation users only) and evaluates
DR (beam + rerank) and DR's reranker over all 24,915 items on the 70,591 test users,
training items excluded, at 20 and 200 (recall@20 / NDCG@20 as the KGAT papers, P/R/F@200
as the paper's Table 2).

A seed whose result file exists in ``--work`` is not run again (so seeds can run in separate
processes); its model is kept in ``--work``/model_sSEED. Writes ``benchmarks/out/NAME.json``
(every seed, mean and std) and ``NAME.md`` (``--name``, default ``amazon``). The tuned
baselines on the same split come from ``tune_baselines.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deep_retrieval.config import load_config
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.data.prepare import prepare
from deep_retrieval.evaluate import evaluate
from deep_retrieval.model import DeepRetrieval

OUT = Path(__file__).parent / "out"
ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
KS = [20, 200]
SWEEP = (50, 100, 200, 400)  # serving beam sizes tried on the validation users


def run_seed(ds: Dataset, args, seed: int, work: Path) -> dict:
    done, model_dir = work / f"seed{seed}.json", work / f"model_s{seed}"
    out = json.loads(done.read_text()) if done.exists() else None
    if out is not None and "beam_sweep" in out:
        return out
    t_train = None
    if model_dir.exists():
        m = DeepRetrieval.load(model_dir)
    else:
        cfg = load_config(args.config, [*args.overrides, f"train.seed={seed}", "train.progress=false"])
        t0 = time.perf_counter()
        m = DeepRetrieval(cfg).fit(ds, log=lambda s: print(f"  seed {seed}: {s}", flush=True))
        t_train = time.perf_counter() - t0
        m.save(model_dir)  # for bench_rerank.py --model
    if out is None:
        res = evaluate(ds, m.as_recommenders(), KS, split="test", exclude_history=True)
        out = {"seed": seed, "train_s": t_train, "epochs": len(m.log), "paths": m.log[-1]["paths"],
               "results": res["results"], "n_users": res["n_users"]}
    out.update(beam_sweep(ds, m))
    done.write_text(json.dumps(out, default=float) + "\n")
    return out


def beam_sweep(ds: Dataset, m: DeepRetrieval) -> dict:
    """B chosen on the VALIDATION users: the smallest of SWEEP whose DR recall@20 is >= 0.99 of
    the reranker's brute force (else the largest); then DR at that B on the test users. (On
    validation, recall@200 stays below 0.99 of brute force up to B = 800, 7,400 items scored:
    seed 3 gave 0.867 / 0.918 / 0.936 / 0.959 / 0.980 at B = 50 / 100 / 200 / 400 / 800.)"""
    B0 = m.config.beam.B
    bf = {"brute-force": m.as_recommenders()["brute-force"]}
    val_bf = evaluate(ds, bf, KS, split="val", exclude_history=True, latency_users=0)["results"]
    sweep = []
    for B in SWEEP:
        m.config.beam.B = B  # DR's recommend() beams with the config's B
        r = evaluate(ds, {"dr": m}, KS, split="val", exclude_history=True, latency_users=0)["results"]
        ratio = {x["k"]: x["recall"] / y["recall"] for x, y in zip(r, val_bf, strict=True)}
        sweep.append({"B": B, "val_ratio": ratio, "items_scored": r[0]["items_scored_per_user"]})
        print(f"  B {B}: validation DR / brute force {ratio}, {r[0]['items_scored_per_user']:.0f} items",
              flush=True)
    chosen = next((x["B"] for x in sweep if x["val_ratio"][KS[0]] >= 0.99), SWEEP[-1])
    m.config.beam.B = chosen
    test = evaluate(ds, {"dr": m}, KS, split="test", exclude_history=True)["results"]
    m.config.beam.B = B0
    return {"beam_sweep": sweep, "B_chosen": chosen, "results_chosen": test}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(ROOT))
    ap.add_argument("--work", default="/tmp/dr-amazon-5k")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--config", default="amazon-book")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="amazon", help="benchmarks/out/NAME.json and NAME.md")
    ap.add_argument("--val-users", type=int, default=5000, help="validation users of a new --work")
    args = ap.parse_args()
    work = Path(args.work)
    data = work / "data"
    if not (data / "manifest.json").exists():
        root = Path(args.data_root) / "amazon-book"
        prepare([root / "train.txt", root / "test.txt"], data, protocol="given-split",
                val_users=args.val_users)
    ds = Dataset.load(data)
    if len(ds.val) != args.val_users:
        raise SystemExit(f"{data} holds {len(ds.val)} validation users, not --val-users {args.val_users}: "
                         "use another --work")
    runs = [run_seed(ds, args, int(s), work) for s in args.seeds.split(",")]

    # each run's rows, DR at the beam chosen on validation as a method of its own
    per_run = [r["results"] + [{**x, "method": "dr-val-B"} for x in r["results_chosen"]] for r in runs]
    rows = {}
    for run_rows in per_run:
        for x in run_rows:
            rows.setdefault((x["method"], x["k"]), []).append(x)
    summary = {}
    for (method, k), xs in rows.items():
        summary[f"{method}@{k}"] = {m: _mean_std([x[m] for x in xs]) for m in (
            "precision", "recall", "f1", "ndcg", "items_scored_per_user", "latency_ms_batch1")}
    ratio = {k: float(np.mean([_get(x, "dr", k) / _get(x, "brute-force", k) for x in per_run])) for k in KS}
    ratio_chosen = {k: float(np.mean([_get(x, "dr-val-B", k) / _get(x, "brute-force", k) for x in per_run]))
                    for k in KS}
    out = {"config": args.config, "overrides": args.overrides, "seeds": [r["seed"] for r in runs],
           "train_s": [r["train_s"] for r in runs], "epochs": [r["epochs"] for r in runs],
           "B_chosen": [r["B_chosen"] for r in runs], "dr_over_brute_force_recall": ratio,
           "dr_val_B_over_brute_force_recall": ratio_chosen, "summary": summary,
           "runs": runs}
    OUT.mkdir(exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    (OUT / f"{args.name}.md").write_text(_table(out))
    print(_table(out))


def _mean_std(xs: list[float]) -> list[float]:
    return [float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0]


def _get(rows: list[dict], method: str, k: int, metric: str = "recall") -> float:
    return next(x[metric] for x in rows if x["method"] == method and x["k"] == k)


def _table(out: dict) -> str:
    s = out["summary"]
    n = len(out["seeds"])

    def f(key: str, m: str, scale: float = 1.0, digits: int = 4) -> str:
        mean, std = s[key][m]
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"

    lines = [f"# Amazon-book, KGAT split: config {out['config']} {' '.join(out['overrides'])}, "
             f"seeds {out['seeds']} (mean ± std over {n})", "",
             "| method | R@20 | NDCG@20 | P@200 % | R@200 % | F@200 % | items scored | ms/user batch 1 |",
             "|---|---|---|---|---|---|---|---|"]
    for m in ("dr", "dr-val-B", "brute-force"):
        a, b = f"{m}@20", f"{m}@200"
        lines.append(f"| {m} | {f(a, 'recall')} | {f(a, 'ndcg')} | {f(b, 'precision', 100, 2)} | "
                     f"{f(b, 'recall', 100, 2)} | {f(b, 'f1', 100, 2)} | "
                     f"{s[a]['items_scored_per_user'][0]:.0f} | {s[a]['latency_ms_batch1'][0]:.3f} |")
    r, rc = out["dr_over_brute_force_recall"], out["dr_val_B_over_brute_force_recall"]
    lines += ["", f"dr = the config's beam; dr-val-B = the smallest B of {list(SWEEP)} whose DR recall@20 "
              f"is >= 0.99 of brute force on the validation users (chosen: {out['B_chosen']}).",
              f"DR recall / its reranker by brute force: @20 {r[20]:.3f}, @200 {r[200]:.3f} (config B); "
              f"@20 {rc[20]:.3f}, @200 {rc[200]:.3f} (B chosen on validation).",
              f"Training per seed: {', '.join('?' if t is None else f'{t:.0f}' for t in out['train_s'])} s "
              f"({', '.join(str(e) for e in out['epochs'])} epochs).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
