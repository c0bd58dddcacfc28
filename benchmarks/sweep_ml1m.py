"""Sensitivity of Deep Retrieval to K, D, J, B and alpha on ml-1m (the paper's section 4.3).

    dr prepare /work/shared/data/ml-1m/pairs.csv.gz --out /tmp/w/ml1m   # once
    python benchmarks/sweep_ml1m.py --data /tmp/w/ml1m                  # the full sweep
    python benchmarks/sweep_ml1m.py --data /tmp/w/ml1m --quick          # small, for developing

Base config: the built-in ``ml1m`` (K=50, D=3, J=3, B=10, alpha=3e-2). One parameter is
varied at a time, the others at the base values; every point that equals the base config
reuses the base run. Each trained model is evaluated on the test users (dr and its
brute-force twin, k = 10 and 200). B is a serving-time parameter: it is varied on the base
model(s) only (``model.recommend(..., B=b)``); training is as configured. The inference-time
table (DR vs brute force, ms per user at batch 1 and batched) is measured on the base model
in the same run as its evaluation.

Resumable: each run's result is cached in ``<out>/runs/<label>-seed<seed>-<key>.json``, the
key a hash of the config's entries that differ from the code's defaults (seed included), the
data set and the evaluation settings, recomputed from each cached file's own content; a
cached run is never redone. Code changes do not change the keys (each run records the git
commit the process started on). Outputs (rewritten after every run, so partial results are always there):
``<out>/sweep.json`` (every raw number, each run's config and wall times, each part's wall
time), ``<out>/{K,D,J,B,alpha}.png`` and ``<out>/tables.md``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deep_retrieval.config import Config, load_config
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.evaluate import evaluate
from deep_retrieval.model import DeepRetrieval
from deep_retrieval.paths import path_stats
from deep_retrieval.recommender import Recommender

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = 2  # bump when the content of a run's result changes (invalidates the cache)
KS = [10, 200]
BASE = {"structure.K": 50, "structure.D": 3, "structure.J": 3, "em.alpha": 3e-2, "beam.B": 10}

# (part, label, overrides relative to the base, optional): in priority order, so that if the
# time budget runs out the runs left are the least informative ones
FULL_RUNS = [
    ("base", "base", {}, False),
    ("J", "J=1", {"structure.J": 1}, False),
    ("D", "K=50,D=2", {"structure.D": 2}, False),
    ("alpha", "alpha=0", {"em.alpha": 0.0}, False),
    ("alpha", "alpha=0.3", {"em.alpha": 3e-1}, False),
    ("K", "K=10", {"structure.K": 10}, False),
    ("K", "K=100", {"structure.K": 100}, False),
    ("D", "K=354,D=2", {"structure.K": 354, "structure.D": 2}, False),
    ("J", "J=2", {"structure.J": 2}, False),
    ("J", "J=4", {"structure.J": 4}, False),
    ("alpha", "alpha=0.003", {"em.alpha": 3e-3}, False),
    ("K", "K=25", {"structure.K": 25}, False),
    ("D", "K=50,D=4", {"structure.D": 4}, False),
    ("alpha", "alpha=0.0003", {"em.alpha": 3e-4}, True),
    ("D", "K=19,D=4", {"structure.K": 19, "structure.D": 4}, True),
]
FULL_B = [1, 3, 5, 10, 25, 50]
QUICK_RUNS = [
    ("base", "base", {}, False),
    ("J", "J=1", {"structure.J": 1}, False),
    ("D", "K=50,D=2", {"structure.D": 2}, False),
    ("alpha", "alpha=0", {"em.alpha": 0.0}, False),
    ("K", "K=10", {"structure.K": 10}, False),
    ("D", "K=354,D=2", {"structure.K": 354, "structure.D": 2}, True),
]
QUICK_B = [1, 10, 50]
QUICK_MAX_EXAMPLES = 20000

# the config key each part varies
PARAM = {"K": "structure.K", "D": "structure.D", "J": "structure.J", "alpha": "em.alpha"}


# --------------------------------------------------------------------------- helpers
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + (" (src modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_fingerprint(ds_dir: Path) -> dict:
    m = json.loads((ds_dir / "manifest.json").read_text())
    return {"sources": [s.get("sha256") for s in m.get("sources", [])], "parameters": m.get("parameters")}


def config_delta(cfg_dict: dict) -> dict:
    """The entries of a config (as a dict) that differ from the code's defaults, "TABLE.KEY": value.

    Cache keys hash this, not the whole config: a field added to Config later (with a default
    that keeps the old behaviour) then leaves the keys of runs already done unchanged.
    """
    norm = json.loads(json.dumps(cfg_dict, default=list))
    defaults = json.loads(json.dumps(Config().to_dict(), default=list))
    missing = object()
    return {
        f"{t}.{k}": v
        for t, table in norm.items()
        for k, v in table.items()
        if defaults.get(t, {}).get(k, missing) != v
    }


def run_key(cfg_dict: dict, fingerprint: dict, eval_settings: dict) -> str:
    blob = json.dumps(
        {"schema": SCHEMA, "config": config_delta(cfg_dict), "data": fingerprint, "eval": eval_settings},
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_runs(runs_dir: Path) -> dict[str, dict]:
    """Every cached run result, by the key recomputed from its own config and settings."""
    out = {}
    for f in sorted(runs_dir.glob("*.json")):
        r = json.loads(f.read_text())
        if {"config", "data_fingerprint", "eval_settings"} <= set(r):
            out[run_key(r["config"], r["data_fingerprint"], r["eval_settings"])] = r
    return out


def make_config(base: str, extra: list[str], overrides: dict, seed: int, quick: bool) -> Config:
    sets = list(extra) + [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    sets += [f"train.seed={seed}", "train.threads=1", "train.progress=false"]
    if quick:
        sets.append(f"train.max_examples_per_epoch={QUICK_MAX_EXAMPLES}")
    cfg = load_config(base, tuple(sets))
    T, E = cfg.train, cfg.em
    if T.max_examples_per_epoch and E.mstep_every:
        # keep the schedule (M-step after the joint epochs) when epochs are subsampled
        per_epoch = -(-T.max_examples_per_epoch // T.batch_size)
        cfg.em.mstep_every = max(1, T.epochs_joint) * per_epoch
    return cfg.validate()


class FixedBeam(Recommender):
    """The base model served with beam size B (training untouched)."""

    def __init__(self, model: DeepRetrieval, B: int):
        self.model, self.B, self.name = model, B, f"dr B={B}"

    def fit(self, dataset):
        return self

    def recommend(self, histories, k, exclude_history=False):
        out = self.model.recommend(histories, k, exclude_history, B=self.B)
        self.last_items_scored = self.model.last_items_scored
        return out

    def save(self, path):
        raise NotImplementedError

    @classmethod
    def load(cls, path):
        raise NotImplementedError


def rows_of(res: dict) -> dict:
    return {f"{r['method']}@{r['k']}": r for r in res["results"]}


def inference_times(model: DeepRetrieval, ds: Dataset, n_single: int, batch: int, reps: int = 3) -> dict:
    """ms per user of DR (beam + rerank), its beam search alone, and brute force (k = 200).

    The methods are interleaved (per user at batch 1; per repetition batched, the best of
    ``reps`` kept) so that load from other processes hits them alike.
    """
    s = ds.split("test")
    users = np.flatnonzero(s.truth.lengths > 0)
    hist = s.hist.take(users)
    n = len(users)
    bf = model.as_recommenders()["brute-force"]
    k = max(KS)
    fns = {
        "dr": lambda h: model.recommend(h, k),
        "dr beam search only": lambda h: model.beam_search(h),
        "brute-force": lambda h: bf.recommend(h, k),
    }
    for fn in fns.values():
        fn(hist.take(np.arange(1)))  # warm-up
    single: dict[str, list[float]] = {name: [] for name in fns}
    for u in range(min(n_single, n)):
        row = hist.take(np.array([u]))
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(row)
            single[name].append(time.perf_counter() - t0)
    batched: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for lo in range(0, n, batch):
                fn(hist.take(np.arange(lo, min(n, lo + batch))))
            batched[name].append((time.perf_counter() - t0) * 1e3 / n)
    out = {}
    for name in fns:
        out[name] = {
            "ms_batch1_median": float(np.median(single[name])) * 1e3,
            "ms_batch1_p90": float(np.percentile(single[name], 90)) * 1e3,
            "ms_batched": float(min(batched[name])),
            "ms_batched_reps": batched[name],
            "n_single": len(single[name]),
            "batch": batch,
            "n_users": int(n),
        }
    out["torch_threads"] = torch.get_num_threads()
    return out


def do_run(spec: dict, ds: Dataset, args, model_dir: Path | None) -> dict:
    cfg: Config = spec["config"]
    t_run = time.perf_counter()
    model = DeepRetrieval(cfg)
    t0 = time.perf_counter()
    model.fit(ds, log=lambda line: print(f"  [{spec['label']} seed {spec['seed']}] {line}", flush=True))
    train_s = time.perf_counter() - t0
    S = cfg.structure
    t0 = time.perf_counter()
    res = evaluate(
        ds,
        model.as_recommenders(),
        KS,
        split="test",
        latency_users=args.latency_users,
        dataset_name=str(args.data),
    )
    eval_s = time.perf_counter() - t0
    out = {
        "label": spec["label"],
        "part": spec["part"],
        "key": spec["key"],
        "seed": spec["seed"],
        "overrides": spec["overrides"],
        "config": cfg.to_dict(),
        "values": {"K": S.K, "D": S.D, "J": S.J, "alpha": cfg.em.alpha, "B": cfg.beam.B},
        "n_paths": S.K**S.D,
        "n_params": {
            "total": sum(p.numel() for p in model.net.parameters()),
            "structure": sum(p.numel() for p in model.net.structure.parameters()),
        },
        "train_seconds": train_s,
        "seconds_e_step": sum(e["seconds_e_step"] for e in model.log),
        "seconds_m_step": sum(e["seconds_m_step"] for e in model.log),
        "epochs": model.log,
        "paths": path_stats(model.assignment, S.K**S.D),
        "evaluate": res,
        "eval_seconds": eval_s,
        "git": args.git_at_start,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "data_fingerprint": spec["fingerprint"],
        "eval_settings": spec["eval_settings"],
    }
    if spec["part"] == "base" and args.B:  # serving-time B sweep on the base model
        t0 = time.perf_counter()
        beams = {f"dr B={b}": FixedBeam(model, b) for b in args.B}
        out["B_sweep"] = evaluate(
            ds, beams, KS, split="test", latency_users=args.latency_users, dataset_name=str(args.data)
        )
        out["B_sweep_seconds"] = time.perf_counter() - t0
    if spec["part"] == "base":  # inference-time table on the base model
        t0 = time.perf_counter()
        out["inference"] = inference_times(model, ds, args.timing_users, args.timing_batch)
        out["inference_seconds"] = time.perf_counter() - t0
    if model_dir is not None:
        model.save(model_dir / f"{spec['label'].replace(',', '_')}-seed{spec['seed']}-{spec['key']}")
    out["wall_seconds"] = time.perf_counter() - t_run
    return out


# --------------------------------------------------------------------------- aggregation
def metric(run: dict, method: str, k: int, m: str) -> float:
    return rows_of(run["evaluate"])[f"{method}@{k}"][m]


def ms(vals: list[float], fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    v = [x * scale for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "-"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(np.mean(v))} ± {fmt.format(np.std(v, ddof=1))}"


def group(runs: list[dict], labels: list[str]) -> list[tuple[str, list[dict]]]:
    """(label, [runs over seeds]) in the given order, only labels with at least one run."""
    out = []
    for lab in labels:
        rs = [r for r in runs if r["label"] == lab]
        if rs:
            out.append((lab, sorted(rs, key=lambda r: r["seed"])))
    return out


def part_labels(part: str, grid: list) -> list[str]:
    """The run labels a part's table/plot shows, in x order; 'base' stands for the default."""
    labs = {lab: (p, ov) for p, lab, ov, _ in grid}
    if part == "D":
        # K = 50 series and the equal-number-of-paths series, base included in both
        return [
            lab
            for lab in ("K=50,D=2", "base", "K=50,D=4", "K=354,D=2", "K=19,D=4")
            if lab == "base" or lab in labs
        ]
    key = PARAM[part]
    pts = [(BASE[key], "base")] + [(ov[key], lab) for p, lab, ov, _ in grid if p == part]
    return [lab for _, lab in sorted(pts)]


def x_of(run: dict, part: str):
    return run["values"][part]


METRIC_COLS = [("precision", "P"), ("recall", "R"), ("f1", "F")]


def perf_cells(rs: list[dict], method: str) -> list[str]:
    return [ms([metric(r, method, k, m) for r in rs], scale=100) for k in KS for m, _ in METRIC_COLS]


def perf_header() -> tuple[str, str]:
    cols = [f"{c}@{k} %" for k in KS for _, c in METRIC_COLS]
    return " | ".join(cols), "|".join(["---:"] * len(cols))


def tables_md(runs: list[dict], grid: list, args, meta: dict) -> str:
    L = [
        "# Deep Retrieval sensitivity on ml-1m (the paper's section 4.3)",
        "",
        f"Generated by `{meta['command']}` ({meta['date']}, {meta['machine']}, code {meta['git']}).",
        f"Base config: built-in `ml1m` (K=50, D=3, J=3, B=10, alpha=3e-2, M-step after the joint "
        f"epochs); one parameter varied at a time; seeds {args.seeds}; torch threads 1"
        + (f"; QUICK mode ({QUICK_MAX_EXAMPLES} examples per epoch)" if args.quick else "")
        + ".",
        f"Test users: {meta.get('n_test_users', '?')} (user split, first half of each history "
        "as input, second half as truth). Metrics in percent; mean ± std over seeds where "
        "more than one seed. 'cands/user' = items the reranker scored per test user (DR), "
        "'largest' = items on the largest path, 'non-empty' = paths holding an item.",
        "",
    ]
    h, sep = perf_header()

    # ---------------------------------------------------------------- Table 3: inference time
    base = [r for r in runs if r["label"] == "base" and "inference" in r]
    if base:
        L += [
            "## Inference time (like Table 3): DR vs brute force on the base model",
            "",
            f"k = {max(KS)}; batch 1: median over {base[0]['inference']['dr']['n_single']} test users; "
            f"batched: all {base[0]['inference']['dr']['n_users']} test users in batches of "
            f"{base[0]['inference']['dr']['batch']} (best of 3 passes); the methods interleaved; "
            "1 torch thread, on a shared 2-core machine (other jobs running: treat ratios, "
            "not absolute numbers). 'dr' = beam search + candidate lookup + rerank.",
            "",
            "| method | items scored / user | ms/user batch 1 | ms/user batched | R@200 % |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in ("dr", "dr beam search only", "brute-force"):
            sc = (
                [metric(r, "dr", 200, "items_scored_per_user") for r in base]
                if name == "dr"
                else [metric(r, "brute-force", 200, "items_scored_per_user") for r in base]
                if name == "brute-force"
                else []
            )
            rec = [metric(r, name, 200, "recall") for r in base] if name != "dr beam search only" else []
            L.append(
                f"| {name} | {ms(sc, '{:.0f}')} | "
                f"{ms([r['inference'][name]['ms_batch1_median'] for r in base], '{:.3f}')} | "
                f"{ms([r['inference'][name]['ms_batched'] for r in base], '{:.3f}')} | "
                f"{ms(rec, scale=100)} |"
            )
        sp1 = [
            r["inference"]["brute-force"]["ms_batch1_median"] / r["inference"]["dr"]["ms_batch1_median"]
            for r in base
        ]
        spb = [r["inference"]["brute-force"]["ms_batched"] / r["inference"]["dr"]["ms_batched"] for r in base]
        L += ["", f"Brute force / DR time: batch 1 {ms(sp1)}x, batched {ms(spb)}x.", ""]

    # ---------------------------------------------------------------- Table 4: D
    d_rows = group(runs, part_labels("D", grid))
    if d_rows:
        L += [
            "## Depth D (like Table 4)",
            "",
            "K = 50 with D = 2, 3, 4, and K^D held near 50^3 = 125,000 paths: (K=354, D=2), "
            "(K=50, D=3), (K=19, D=4). DR, with its brute-force twin's R@200.",
            "",
            f"| K | D | K^D | structure params | {h} | BF R@200 % "
            "| cands/user | largest | non-empty | train s |",
            f"|---:|---:|---:|---:|{sep}|---:|---:|---:|---:|---:|",
        ]
        for _, rs in d_rows:
            r0 = rs[0]
            L.append(
                f"| {r0['values']['K']} | {r0['values']['D']} | {r0['n_paths']:,} | "
                f"{r0['n_params']['structure']:,} | "
                + " | ".join(perf_cells(rs, "dr"))
                + f" | {ms([metric(r, 'brute-force', 200, 'recall') for r in rs], scale=100)}"
                + f" | {ms([metric(r, 'dr', 200, 'items_scored_per_user') for r in rs], '{:.0f}')}"
                + f" | {ms([r['paths']['largest'] for r in rs], '{:.0f}')}"
                + f" | {ms([r['paths']['non_empty'] for r in rs], '{:.0f}')}"
                + f" | {ms([r['train_seconds'] for r in rs], '{:.0f}')} |"
            )
        L.append("")

    # ---------------------------------------------------------------- Table 5: alpha
    a_rows = group(runs, part_labels("alpha", grid))
    if a_rows:
        L += [
            "## Penalty alpha vs path sizes (like Table 5)",
            "",
            "Largest path = items on the path holding the most items; candidates per user = "
            "mean items the reranker scores per test user (B = 10).",
            "",
            "| alpha | largest path | non-empty paths | mean path size | candidates / user | "
            "DR R@10 % | DR R@200 % |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for _, rs in a_rows:
            L.append(
                f"| {rs[0]['values']['alpha']:g} | {ms([r['paths']['largest'] for r in rs], '{:.0f}')} | "
                f"{ms([r['paths']['non_empty'] for r in rs], '{:.0f}')} | "
                f"{ms([r['paths']['mean'] for r in rs], '{:.1f}')} | "
                f"{ms([metric(r, 'dr', 200, 'items_scored_per_user') for r in rs], '{:.0f}')} | "
                f"{ms([metric(r, 'dr', 10, 'recall') for r in rs], scale=100)} | "
                f"{ms([metric(r, 'dr', 200, 'recall') for r in rs], scale=100)} |"
            )
        L.append("")

    # ---------------------------------------------------------------- per parameter
    for part in ("K", "J", "alpha", "D"):
        rows = group(runs, part_labels(part, grid))
        if not rows:
            continue
        L += [
            f"## {part}: DR and its brute-force twin",
            "",
            f"| run | method | {h} | cands/user | largest | non-empty | train s |",
            f"|---|---|{sep}|---:|---:|---:|---:|",
        ]
        for lab, rs in rows:
            for meth in ("dr", "brute-force"):
                sc = ms([metric(r, meth, 200, "items_scored_per_user") for r in rs], "{:.0f}")
                if meth == "dr":
                    tail = (
                        f" | {sc} | {ms([r['paths']['largest'] for r in rs], '{:.0f}')}"
                        f" | {ms([r['paths']['non_empty'] for r in rs], '{:.0f}')}"
                        f" | {ms([r['train_seconds'] for r in rs], '{:.0f}')} |"
                    )
                else:
                    tail = f" | {sc} | | | |"
                name = "base (K=50, D=3, J=3, alpha=0.03)" if lab == "base" else lab
                L.append(
                    f"| {name if meth == 'dr' else ''} | {meth} | " + " | ".join(perf_cells(rs, meth)) + tail
                )
        L.append("")

    # ---------------------------------------------------------------- B
    bs = [r for r in runs if r["label"] == "base" and "B_sweep" in r]
    if bs:
        L += [
            "## B (beam size): varied at serving time only, on the base model(s)",
            "",
            "Training as configured (the base ml1m config); only `model.recommend(..., B=b)` changes. "
            "Brute force (B-independent) in the last row.",
            "",
            f"| B | {h} | cands/user | ms/user batch 1 | ms/user batched |",
            f"|---:|{sep}|---:|---:|---:|",
        ]
        for b in args.B:

            def g(r, k, m, b=b):
                return rows_of(r["B_sweep"])[f"dr B={b}@{k}"][m]

            cells = [ms([g(r, k, m) for r in bs], scale=100) for k in KS for m, _ in METRIC_COLS]
            L.append(
                f"| {b} | "
                + " | ".join(cells)
                + f" | {ms([g(r, 200, 'items_scored_per_user') for r in bs], '{:.0f}')}"
                + f" | {ms([g(r, 200, 'latency_ms_batch1') for r in bs], '{:.3f}')}"
                + f" | {ms([g(r, 200, 'latency_ms_batched') for r in bs], '{:.3f}')} |"
            )
        L.append(
            "| brute force | "
            + " | ".join(perf_cells(bs, "brute-force"))
            + f" | {ms([metric(r, 'brute-force', 200, 'items_scored_per_user') for r in bs], '{:.0f}')}"
            + f" | {ms([metric(r, 'brute-force', 200, 'latency_ms_batch1') for r in bs], '{:.3f}')}"
            + f" | {ms([metric(r, 'brute-force', 200, 'latency_ms_batched') for r in bs], '{:.3f}')} |"
        )
        L.append("")

    # ---------------------------------------------------------------- wall times
    L += [
        "## Wall time",
        "",
        "| part | runs (labels) | runs | wall s (sum of its runs) |",
        "|---|---|---|---:|",
    ]
    for part, info in meta["parts"].items():
        L.append(f"| {part} | {', '.join(info['labels'])} | {info['n_runs']} | {info['wall_seconds']:.0f} |")
    L += [
        "",
        f"Sum over all distinct runs: {meta['wall_seconds_all_runs']:.0f} s; "
        f"this invocation: {meta['session_seconds']:.0f} s. The base run is shared by every part "
        "(counted in each part's sum, once in the total). "
        "Per run (train / evaluate / B sweep + timing / total s):",
        "",
    ]
    for r in sorted(runs, key=lambda r: (r["label"], r["seed"])):
        extra = r.get("B_sweep_seconds", 0) + r.get("inference_seconds", 0)
        L.append(
            f"- {r['label']} seed {r['seed']}: {r['train_seconds']:.0f} / {r['eval_seconds']:.0f} / "
            f"{extra:.0f} / {r['wall_seconds']:.0f}"
        )
    inv = meta.get("invocations", [])
    if inv:
        L += ["", "Invocations (each trains only what the cache lacks):", ""]
        for i in inv:
            L.append(
                f"- {i['start']}: `{i['command']}`, code {i['git']}: trained {i['trained']}, "
                f"{i['seconds'] / 60:.1f} min"
            )
        L.append("")
    if meta.get("skipped"):
        L += [
            "",
            "Skipped (time budget; rerun the same command to resume): " + ", ".join(meta["skipped"]),
        ]
    return "\n".join(L) + "\n"


def plots(runs: list[dict], grid: list, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def agg(rs, f):
        v = np.array([f(r) for r in rs], dtype=float)
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else 0.0)

    def draw(part, series, xlabel, xscale=None, xticks=None, note=None):
        """series: [(name, color, [(x, [runs])], getter(run, method, k, m) )]."""
        fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
        for i, k in enumerate(KS):
            for j, (m, mname) in enumerate(
                [("recall", "recall"), ("precision", "precision"), ("f1", "F-measure")]
            ):
                ax = axes[i, j]
                for name, color, pts, get in series:
                    if not pts:
                        continue
                    xs = [x for x, _ in pts]
                    for meth, ls in (("dr", "-"), ("brute-force", "--")):
                        vals = [
                            agg(rs, lambda r, g=get, a=meth, kk=k, mm=m: 100 * g(r, a, kk, mm))
                            for _, rs in pts
                        ]
                        ys, es = [v[0] for v in vals], [v[1] for v in vals]
                        lab = f"{'DR' if meth == 'dr' else 'brute force'}{(' ' + name) if name else ''}"
                        ax.errorbar(
                            xs,
                            ys,
                            yerr=es if any(es) else None,
                            color=color,
                            ls=ls,
                            marker="o" if meth == "dr" else None,
                            ms=4,
                            capsize=3,
                            label=lab,
                        )
                ax.set_title(f"{mname}@{k}")
                ax.set_xlabel(xlabel)
                ax.set_ylabel("%")
                if xscale:
                    ax.set_xscale(xscale)
                if xticks:
                    ax.set_xticks(xticks[0], xticks[1])
                ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        title = f"DR on ml-1m: sensitivity to {part}" + (" (QUICK)" if args.quick else "")
        fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
        fig.savefig(out / f"{part}.png", dpi=110)
        plt.close(fig)

    def m_get(r, meth, k, m):
        return metric(r, meth, k, m)

    for part, xscale in (("K", "log"), ("J", None)):
        pts = [(x_of(rs[0], part), rs) for _, rs in group(runs, part_labels(part, grid))]
        if pts:
            draw(
                part,
                [("", "C0", pts, m_get)],
                part,
                xscale,
                xticks=([x for x, _ in pts], [str(x) for x, _ in pts]),
            )
    # alpha: categorical positions (0 has no log)
    a = group(runs, part_labels("alpha", grid))
    if a:
        pts = [(i, rs) for i, (_, rs) in enumerate(a)]
        labels = [
            f"{rs[0]['values']['alpha']:g}\nlargest {int(np.mean([r['paths']['largest'] for r in rs]))}"
            for _, rs in a
        ]
        draw(
            "alpha",
            [("", "C0", pts, m_get)],
            "alpha (largest path size below)",
            xticks=(list(range(len(a))), labels),
        )
    # D: the K = 50 series and the equal-paths series
    d = dict(group(runs, part_labels("D", grid)))
    if d:
        k50 = [(x_of(d[lab][0], "D"), d[lab]) for lab in ("K=50,D=2", "base", "K=50,D=4") if lab in d]
        eq = [(x_of(d[lab][0], "D"), d[lab]) for lab in ("K=354,D=2", "base", "K=19,D=4") if lab in d]
        draw(
            "D",
            [("K=50", "C0", k50, m_get), ("K^D~125k", "C1", eq, m_get)],
            "D",
            xticks=([2, 3, 4], ["2", "3", "4"]),
            note="K=50 series (blue) and K^D held near 50^3: K=354,D=2 / K=50,D=3 / K=19,D=4 (orange)",
        )
    bs = [r for r in runs if r["label"] == "base" and "B_sweep" in r]
    if bs:
        pts = []
        for b in args.B:
            pts.append((b, [dict(r, _b=b) for r in bs]))

        def get_b(r, meth, k, m):
            if meth == "dr":
                return rows_of(r["B_sweep"])[f"dr B={r['_b']}@{k}"][m]
            return metric(r, meth, k, m)

        draw(
            "B",
            [("", "C0", pts, get_b)],
            "B (serving only; trained as configured)",
            "log",
            xticks=(args.B, [str(b) for b in args.B]),
            note="B varied at serving time on the base model; brute force is B-independent",
        )


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="prepared ml-1m (dr prepare)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory [results/sweep_ml1m; /tmp/w/sweep_ml1m_quick with --quick]",
    )
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds [0]")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"develop: {QUICK_MAX_EXAMPLES} examples per epoch and small grids",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="TABLE.KEY=VALUE applied to every run (changes the cache keys)",
    )
    ap.add_argument("--parts", default="K,D,J,alpha,B", help="parts to run (the base always runs)")
    ap.add_argument(
        "--budget-min",
        type=float,
        default=115.0,
        help="runs that would end past this many minutes into this invocation are skipped "
        "(rerun the same command to resume them)",
    )
    ap.add_argument("--latency-users", type=int, default=100)
    ap.add_argument("--timing-users", type=int, default=200)
    ap.add_argument("--timing-batch", type=int, default=256)
    ap.add_argument(
        "--model-dir", type=Path, default=None, help="also save every trained model here (default: none)"
    )
    ap.add_argument("--dry-run", action="store_true", help="list the runs and their cache state")
    args = ap.parse_args()
    t_session = time.perf_counter()
    args.git_at_start = git_commit()  # the code this process runs (imported now)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    torch.set_num_threads(1)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.B = QUICK_B if args.quick else FULL_B
    out = args.out or (Path("/tmp/w/sweep_ml1m_quick") if args.quick else ROOT / "results" / "sweep_ml1m")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    grid = [g for g in (QUICK_RUNS if args.quick else FULL_RUNS) if g[0] == "base" or g[0] in parts]
    if "B" not in parts:
        args.B = []
    if args.quick:
        args.latency_users = min(args.latency_users, 50)
        args.timing_users = min(args.timing_users, 50)

    fingerprint = data_fingerprint(args.data)
    eval_settings = {
        "ks": KS,
        "split": "test",
        "B": args.B,
        "latency_users": args.latency_users,
        "timing_users": args.timing_users,
        "timing_batch": args.timing_batch,
    }
    specs = []
    for seed in args.seeds:
        for part, label, ov, optional in grid:
            cfg = make_config("ml1m", args.overrides, ov, seed, args.quick)
            # the base run's key also covers the serving-time settings; the others do not need them
            ev = (
                eval_settings
                if part == "base"
                else {k: eval_settings[k] for k in ("ks", "split", "latency_users")}
            )
            key = run_key(cfg.to_dict(), fingerprint, ev)
            specs.append(
                {
                    "part": part,
                    "label": label,
                    "overrides": ov,
                    "optional": optional,
                    "seed": seed,
                    "config": cfg,
                    "key": key,
                    "fingerprint": fingerprint,
                    "eval_settings": ev,
                    "cache": out / "runs" / f"{label.replace(',', '_')}-seed{seed}-{key}.json",
                }
            )
    done = cached_runs(out / "runs")
    keys = [s["key"] for s in specs]
    assert len(keys) == len(set(keys)), "two runs with the same config: the grid repeats the base"
    if args.dry_run:
        for s in specs:
            print(
                f"{s['label']:>12} seed {s['seed']} {s['key']} "
                f"{'cached' if s['key'] in done else 'to run'}{' (optional)' if s['optional'] else ''}"
            )
        return

    ds = Dataset.load(args.data)
    n_test = int((ds.split("test").truth.lengths > 0).sum())
    cmd = "python benchmarks/sweep_ml1m.py " + " ".join(sys.argv[1:])
    results: dict[str, dict] = {}
    skipped: list[str] = []
    durations: list[float] = []

    inv_file = out / "invocations.json"
    invocations = json.loads(inv_file.read_text()) if inv_file.exists() else []
    trained: list[str] = []

    def this_invocation(n_results: int) -> dict:
        return {
            "start": started,
            "command": cmd,
            "git": args.git_at_start,
            "trained": trained or "nothing (all cached)",
            "skipped": skipped,
            "results": n_results,
            "seconds": time.perf_counter() - t_session,
        }

    def write_outputs() -> None:
        runs = list(results.values())
        parts_info = {}
        for part in ["K", "D", "J", "alpha", "B"]:
            if part not in parts:
                continue
            labs = ["base"] if part == "B" else part_labels(part, grid)
            rs = [r for r in runs if r["label"] in labs]
            info = {"labels": labs, "n_runs": len(rs), "wall_seconds": sum(r["wall_seconds"] for r in rs)}
            if part == "B":
                info = {
                    "labels": ["base (serving)"],
                    "n_runs": len(rs),
                    "wall_seconds": sum(r.get("B_sweep_seconds", 0) for r in rs),
                    "note": "B sweep evaluation time on the base model(s) only",
                }
            parts_info[part] = info
        parts_info["inference time"] = {
            "labels": ["base (serving)"],
            "n_runs": len([r for r in runs if "inference" in r]),
            "wall_seconds": sum(r.get("inference_seconds", 0) for r in runs),
        }
        meta = {
            "command": cmd,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.platform()}, nproc {os.cpu_count()}",
            "git": args.git_at_start,
            "quick": args.quick,
            "seeds": args.seeds,
            "data": str(args.data),
            "data_fingerprint": fingerprint,
            "n_test_users": n_test,
            "base": BASE,
            "ks": KS,
            "B_values": args.B,
            "B_note": "B varied at serving time only (model.recommend(..., B=b) on the base model); "
            "every model trained as configured",
            "grid": [{"part": p, "label": lab, "overrides": ov, "optional": o} for p, lab, ov, o in grid],
            "parts": parts_info,
            "wall_seconds_all_runs": sum(r["wall_seconds"] for r in runs),
            "session_seconds": time.perf_counter() - t_session,
            "invocations": invocations + [this_invocation(len(runs))],
            "skipped": skipped,
        }
        (out / "sweep.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
        (out / "tables.md").write_text(tables_md(runs, grid, args, meta))
        plots(runs, grid, args, out)

    for s in specs:
        if s["key"] in done:
            results[s["key"]] = done[s["key"]]
            print(f"cached: {s['label']} seed {s['seed']} (key {s['key']})", flush=True)
    if results:
        write_outputs()
    for s in specs:
        if s["key"] in results:
            continue
        elapsed = (time.perf_counter() - t_session) / 60
        est = (np.mean(durations) if durations else 0.0) / 60
        if elapsed + (1.3 if s["optional"] else 1.0) * est > args.budget_min:
            print(
                f"skip (time budget): {s['label']} seed {s['seed']}: {elapsed:.0f} min elapsed, "
                f"~{est:.0f} min per run",
                flush=True,
            )
            skipped.append(f"{s['label']} seed {s['seed']}")
            continue
        print(f"run: {s['label']} seed {s['seed']} key {s['key']} ({elapsed:.1f} min elapsed)", flush=True)
        r = do_run(s, ds, args, args.model_dir)
        durations.append(r["wall_seconds"])
        trained.append(f"{s['label']} seed {s['seed']}")
        tmp = s["cache"].with_suffix(".tmp")
        tmp.write_text(json.dumps(r, indent=1) + "\n")
        tmp.replace(s["cache"])
        results[s["key"]] = r
        rr = rows_of(r["evaluate"])
        print(
            f"done: {s['label']} seed {s['seed']} in {r['wall_seconds']:.0f} s "
            f"(train {r['train_seconds']:.0f} s): "
            f"DR R@10 {100 * rr['dr@10']['recall']:.2f} R@200 {100 * rr['dr@200']['recall']:.2f} | "
            f"BF R@10 {100 * rr['brute-force@10']['recall']:.2f} "
            f"R@200 {100 * rr['brute-force@200']['recall']:.2f}"
            f" | cands {rr['dr@200']['items_scored_per_user']:.0f} largest {r['paths']['largest']} "
            f"non-empty {r['paths']['non_empty']}",
            flush=True,
        )
        write_outputs()
    write_outputs()
    if trained or not invocations:
        (out / "invocations.json").write_text(
            json.dumps(invocations + [this_invocation(len(results))], indent=1) + "\n"
        )
    print(f"finished in {(time.perf_counter() - t_session) / 60:.1f} min; outputs in {out}", flush=True)


if __name__ == "__main__":
    main()
