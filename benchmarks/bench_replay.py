"""Time replay: incremental updates (`DeepRetrieval.partial_fit`) against a full retrain.

    python benchmarks/bench_replay.py --sets ml-100k,ml-latest-small,ml1m-sample --chunks 4

For every set: ``time_replay`` (data/replay.py) cuts the time-stamped log into a base period
and N chunks. One model trains on the base; then for chunk j = 0..N-1 both models predict
chunk j from everything before it (``evals[j]``), after which the incremental model takes
chunk j with ``partial_fit`` (the users' earlier interactions as inputs only) and the full
retrain trains from scratch on everything up to chunk j. Reported per chunk: recall@k of
both (all truth items, and the items new since the base period), the time each took to
get there, the new items' path sizes. Targets (issue 13): after the last chunk, incremental
recall within 3% of the full retrain at under 20% of its time.

Writes benchmarks/out/replay.json and benchmarks/out/replay.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from deep_retrieval.config import load_config
from deep_retrieval.data.readers import read
from deep_retrieval.data.replay import ReplayEval, time_replay
from deep_retrieval.model import DeepRetrieval

SETS = {  # name -> (file under the data root, format, reader columns)
    "ml-100k": ("ml-100k/u.data", "ml-100k", {}),
    "ml-latest-small": ("ml-latest-small/ratings.csv", "ml-csv", {}),
    "ml1m-sample": ("ml-1m/sample_100k_with_time.csv", "csv",
                    {"user_col": "user", "item_col": "item", "time_col": "timestamp", "rating_col": "label"}),
}
OUT = Path(__file__).parent / "out"


def recall(model: DeepRetrieval, ev: ReplayEval, k: int) -> dict:
    """Recall@k over the evaluation users (all truth items, and the new ones), original ids."""
    lookup = {str(x): i for i, x in enumerate(model.item_ids.tolist())}
    hists = [[lookup[str(x)] for x in ev.hist[u].tolist() if str(x) in lookup] for u in range(len(ev))]
    ids, _ = model.recommend(hists, k, exclude_history=True)
    rec_all, rec_new, n_new = [], [], 0
    offs = ev.truth.offsets
    for u in range(len(ev)):
        got = {str(model.item_ids[i]) for i in ids[u] if i >= 0}
        truth = [str(x) for x in ev.truth[u].tolist()]
        new = ev.truth_new[offs[u] : offs[u + 1]]
        hits = np.array([t in got for t in truth])
        rec_all.append(hits.mean())
        if new.any():
            rec_new.append(hits[new].mean())
            n_new += int(new.sum())
    return {"recall": float(np.mean(rec_all)), "recall_new": float(np.mean(rec_new)) if rec_new else None,
            "users": len(ev), "new_truth_items": n_new}


def new_item_paths(model: DeepRetrieval, n_base: int) -> dict:
    """Sizes of the paths the items added since the base model sit on."""
    if model.n_items == n_base:
        return {"new_items": 0}
    _, inverse, counts = np.unique(model.assignment, return_inverse=True, return_counts=True)
    sizes = counts[inverse.reshape(model.assignment.shape)]  # (V, J) size of each item's paths
    return {"new_items": model.n_items - n_base, "mean_path_size_new": float(sizes[n_base:].mean()),
            "mean_path_size_all": float(sizes.mean())}


def run_set(name: str, args, cfg) -> dict:
    file, fmt, cols = SETS[name]
    rp = time_replay(read(Path(args.data_root) / file, fmt, **cols), args.chunks, seed=args.seed)
    quiet = lambda _: None  # noqa: E731
    t = time.perf_counter()
    base = DeepRetrieval(copy.deepcopy(cfg)).fit(rp.base, log=quiet)
    t_base = time.perf_counter() - t
    n_base = base.n_items
    inc, full, t_full, t_upd = base, base, t_base, 0.0
    rows = []
    for j in range(rp.n_chunks):
        ev = rp.evals[j]
        row = {"chunk": j, "eval_users": len(ev),
               "incremental": {**recall(inc, ev, args.k), **new_item_paths(inc, n_base)},
               "full": recall(full, ev, args.k), "seconds_full_retrain": t_full}
        if j:
            row["seconds_update"] = t_upd  # the update with chunk j - 1
        rows.append(row)
        print(f"[{name}] chunk {j}: {len(ev)} users, R@{args.k} incremental "
              f"{row['incremental']['recall']:.4f} / full {row['full']['recall']:.4f}", flush=True)
        if j == rp.n_chunks - 1:
            break
        c, h = rp.chunk(j), rp.upto(j - 1)
        t = time.perf_counter()
        inc = copy.deepcopy(inc).partial_fit(c.user, c.item, c.time, epochs=args.update_epochs, log=quiet,
                                             history=(h.user, h.item, h.time))
        t_upd = time.perf_counter() - t
        t = time.perf_counter()
        full = DeepRetrieval(copy.deepcopy(cfg)).fit(rp.dataset(j), log=quiet)
        t_full = time.perf_counter() - t
    last = rows[-1]
    ratio = last["incremental"]["recall"] / max(last["full"]["recall"], 1e-12)
    return {"set": name, "chunks": rp.n_chunks, "k": args.k, "seconds_base": t_base, "rows": rows,
            "manifest_counts": rp.manifest.get("counts"),
            "last": {"recall_ratio": ratio,
                     "time_ratio": last["seconds_update"] / last["seconds_full_retrain"]}}


def markdown(results: list[dict], cmd: str) -> str:
    lines = [f"# Time replay: incremental updates vs full retrain\n\n`{cmd}`\n",
             "| set | chunk | users | R@k incremental | R@k full | R@k new items inc / full | update s | "
             "retrain s | new items | path size new / all |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            i, f = row["incremental"], row["full"]
            new = (f"{i['recall_new']:.4f} / {f['recall_new']:.4f}" if i["recall_new"] is not None
                   and f["recall_new"] is not None else "-")
            sizes = (f"{i['mean_path_size_new']:.1f} / {i['mean_path_size_all']:.1f}"
                     if i.get("new_items") else "-")
            lines.append(f"| {r['set']} | {row['chunk']} | {row['eval_users']} | {i['recall']:.4f} | "
                         f"{f['recall']:.4f} | {new} | {row.get('seconds_update', 0):.1f} | "
                         f"{row['seconds_full_retrain']:.1f} | {i.get('new_items', 0)} | {sizes} |")
    lines.append("")
    for r in results:
        lines.append(f"- {r['set']} after the last chunk: recall incremental / full = "
                     f"{r['last']['recall_ratio']:.3f} (target >= 0.97), time update / retrain = "
                     f"{r['last']['time_ratio']:.3f} (target < 0.20)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="ml-100k,ml-latest-small,ml1m-sample")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--config", default="ml-small")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--update-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT / "replay"))
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, "train.progress=false"])
    results = [run_set(s, args, cfg) for s in args.sets.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shown = {k: v for k, v in vars(args).items() if k not in ("data_root", "out", "overrides")}
    cmd = "python benchmarks/bench_replay.py "
    cmd += " ".join(f"--{k.replace('_', '-')} {v}" for k, v in shown.items())
    cmd += "".join(f" --set {o}" for o in args.overrides)
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "results": results}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results, cmd))
    print(markdown(results, cmd))


if __name__ == "__main__":
    main()
