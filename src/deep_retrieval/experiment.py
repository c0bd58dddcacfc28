"""`dr experiment`: one data set, the paper's protocol, DR against its twins and baselines, N seeds.

An experiment file (TOML) names the data, the DR config and what to report::

    name = "ml1m"
    dr_config = "ml1m"          # built-in name or TOML file (relative to this file); "" = defaults
    dr_set = []                 # overrides, as `dr train --set TABLE.KEY=VALUE`
    seeds = [0, 1, 2, 3, 4]
    ks = [10, 200]
    exclude_history = false
    [data]                      # the options of `dr prepare`
    inputs = ["ml-1m/pairs.csv.gz"]   # relative to --data-root
    protocol = "user-split"

Flow: prepare the data once (into a temporary directory), fit popularity and Item-CF
once (they have no seed), then for every seed train DR and its YouTube-DNN twin (DR's
encoder + sampled softmax trained alone, retrieved by brute force: the paper's "brute
force"; as many epochs as the softmax model DR serves, see ``twin_config``) and evaluate on
the test users:

    item-cf, popularity                       the simple baselines
    baselines = [...]                         more, as `dr evaluate --methods` names them
    rp3beta, ease                             item-item baselines, each tuned on the validation
                                              users (``tuning.GRIDS``, recall at the first k)
    youtube-dnn                               the twin: exact search over its own embeddings
    dr                                        beam search (B) + rerank
    dr-exact                                  DR's own reranker over all V items
    hnsw                                      faiss HNSW over DR's reranker embeddings
    dr+blend, blend                           with a [blend] in the DR config: DR's candidates
                                              ranked by the blend (as the model serves), and the
                                              blend over all items (where w = 0 was picked: DR
                                              and its reranker over all items)

``results/<name>/results.json`` keeps every seed's numbers and the mean and standard
deviation (ddof = 1) per method, k and metric; ``results/<name>/table.md`` shows
mean ± std. Both are written atomically. The same seeds give the same numbers.
"""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .artifacts import atomic_write_json, atomic_write_text, check_output
from .config import Config, _build, load_config, read_toml
from .errors import DRError

METRICS = ("precision", "recall", "f1", "ndcg")
ORDER = ("item-cf", "rp3beta", "ease", "popularity", "youtube-dnn", "dr", "dr-exact", "hnsw", "dr+blend",
         "blend")
LABELS = {
    "item-cf": "Item-CF",
    "rp3beta": "RP3beta (tuned on validation)",
    "ease": "EASE (tuned on validation)",
    "popularity": "Popularity",
    "youtube-dnn": "YouTube-DNN (brute force)",
    "dr": "DR (beam + rerank)",
    "dr-exact": "DR's reranker, brute force",
    "hnsw": "HNSW on DR's embeddings",
    "dr+blend": "DR + blend (as it serves)",
    "blend": "the blend, brute force",
}


@dataclass
class DataSection:
    """`dr prepare`'s options (``min_rating`` < 0 means prepare's default)."""

    inputs: tuple[str, ...] = ()
    protocol: str = "user-split"
    format: str = "auto"
    user_col: str = ""
    item_col: str = ""
    time_col: str = ""
    rating_col: str = ""
    sep: str = ""
    min_rating: float = -1.0
    min_user_interactions: int = 10
    val_users: int = 1000
    test_users: int = 1000
    val_fraction: float = 0.2
    seed: int = 0


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""
    dr_config: str = ""  # "" = the defaults, as `dr train` without --config
    dr_set: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    ks: tuple[int, ...] = (10, 200)
    exclude_history: bool = False
    hnsw: bool = True  # needs faiss (the `ann` extra)
    hnsw_ef: int = 64
    item_cf_neighbours: int = 200
    item_cf_shrink: float = 0.0
    rp3beta: bool = True  # RP3beta, its grid searched on the validation users
    ease: bool = True  # EASE likewise; a dense items x items inverse: false for large catalogues
    ease_l2: tuple[float, ...] = ()  # the l2 values tried (one inverse each); () = tuning.GRIDS
    # more baselines, as `dr evaluate --methods` names them (e.g. "popularity:after=true"): fitted
    # once, not tuned, each a row named by its spec
    baselines: tuple[str, ...] = ()
    threads: int = 0  # torch threads; 0 = torch's default
    data: DataSection = field(default_factory=DataSection)

    @classmethod
    def from_toml(cls, path) -> ExperimentConfig:
        path = Path(path)
        exp = _build(cls, read_toml(path, "experiment file"), str(path))
        cfg_path = path.parent / exp.dr_config
        if exp.dr_config.endswith(".toml") and cfg_path.is_file():
            exp.dr_config = str(cfg_path)  # relative to the experiment file
        return exp.validate()

    def validate(self) -> ExperimentConfig:
        if not self.data.inputs:
            raise DRError(f"experiment {self.name}: [data] inputs is empty")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise DRError(f"experiment {self.name}: seeds must be a non-empty list of distinct integers")
        if not self.ks or min(self.ks) < 1:
            raise DRError(f"experiment {self.name}: ks must be integers >= 1")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise DRError(f"experiment name {self.name!r} cannot name a directory")
        from .evaluate import baseline

        for spec in self.baselines:
            baseline(spec)  # an unknown name or parameter fails here, before any work
        return self

    def dr(self, seed: int) -> Config:
        cfg = load_config(self.dr_config or None, self.dr_set)
        cfg.train.seed = seed
        cfg.train.progress = False
        cfg.blend.exclude_history = self.exclude_history  # a blend is picked as the test users are scored
        if self.threads:
            cfg.train.threads = self.threads
        return cfg.validate()


def prepare_data(exp: ExperimentConfig, data_root, out, log=print):
    from .data.prepare import prepare

    d = exp.data
    inputs = [Path(data_root) / p for p in d.inputs]
    return prepare(
        inputs, out, fmt=d.format, protocol=d.protocol,
        user_col=d.user_col or None, item_col=d.item_col or None, time_col=d.time_col or None,
        rating_col=d.rating_col or None, sep=d.sep or None,
        min_rating=None if d.min_rating < 0 else d.min_rating,
        min_user_interactions=d.min_user_interactions, val_users=d.val_users,
        test_users=d.test_users, val_fraction=d.val_fraction, seed=d.seed, log=log,
    )


def twin_config(cfg: Config, dr_log: list[dict]) -> Config:
    """The twin's config: DR's, trained for as many epochs as the softmax model DR serves.

    Without early stopping that is ``train.epochs_joint``. With it (``train.patience``), the
    joint epochs DR ran, or the epoch it rolled back to (``restored_epoch``), so that the
    twin is not trained past the point DR's own softmax model was kept at.
    """
    joint = [e for e in dr_log if e.get("phase") == "joint"]
    if not cfg.train.patience or not joint:
        return cfg
    epochs = next((e["restored_epoch"] for e in joint if "restored_epoch" in e), joint[-1]["epoch"])
    return replace(cfg, train=replace(cfg.train, epochs_joint=int(epochs)))


def run(exp: ExperimentConfig, data_root, results_dir="results", log=print) -> dict:
    """Run the experiment and write ``results_dir/<name>/{results.json, table.md}``."""
    from .baselines import EASE, HNSW, ItemCF, Popularity, RP3beta
    from .evaluate import _faiss_available, baseline, evaluate
    from .model import DeepRetrieval
    from .tuning import GRIDS, tune
    from .youtube_dnn import YouTubeDNN

    exp.validate()
    check_output(Path(results_dir) / exp.name, "experiment")  # before any work
    for s in exp.seeds:
        exp.dr(s)  # a bad DR config fails before any work
    if exp.hnsw and not _faiss_available():
        raise DRError("hnsw = true needs faiss: pip install 'deep-retrieval[ann]' (or set hnsw = false)")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ds = prepare_data(exp, data_root, Path(tmp) / "data", log=log)
    ks = list(exp.ks)

    def ev(methods):
        return evaluate(ds, methods, ks, exclude_history=exp.exclude_history, latency_users=50)["results"]

    log(f"{exp.name}: baselines")
    t0 = time.perf_counter()
    base_methods = {"item-cf": ItemCF(exp.item_cf_neighbours, exp.item_cf_shrink).fit(ds),
                    "popularity": Popularity().fit(ds)}
    base_methods.update({spec: baseline(spec).fit(ds) for spec in exp.baselines})
    tuned = {}
    for name, cls, on in (("rp3beta", RP3beta, exp.rp3beta), ("ease", EASE, exp.ease)):
        if on:
            log(f"{exp.name}: tuning {name} on the validation users")
            grid = {"l2": list(exp.ease_l2)} if name == "ease" and exp.ease_l2 else GRIDS[name]
            t = tune(cls, grid, ds, "recall", ks[0], exp.exclude_history, keep_best=True)
            tuned[name] = {"params": t.best, "validation": t.table}
            base_methods[name] = t.recommender
    base = ev(base_methods)
    del base_methods
    runs = [{"seed": None, "seconds": time.perf_counter() - t0, "results": base, "tuned": tuned}]
    for seed in exp.seeds:
        cfg = exp.dr(seed)
        log(f"{exp.name}: seed {seed}: DR")
        t0 = time.perf_counter()
        dr = DeepRetrieval(cfg).fit(ds, log=log)
        t_dr = time.perf_counter() - t0
        log(f"{exp.name}: seed {seed}: YouTube-DNN")
        t0 = time.perf_counter()
        yt = YouTubeDNN(twin_config(cfg, dr.log)).fit(ds, log=log)
        t_yt = time.perf_counter() - t0
        recs = dr.as_recommenders()  # "dr" is DR with its own reranker; a blend adds "dr+blend", "blend"
        exact = recs.pop("brute-force")  # DR's reranker over every item
        methods = {"youtube-dnn": yt, "dr-exact": exact, **recs}
        if exp.hnsw:
            methods["hnsw"] = HNSW(exact.item_emb, encode=dr.user_embeddings, ef_search=exp.hnsw_ef).fit(None)
        t0 = time.perf_counter()
        res = ev(methods)
        last = dr.log[-1]
        runs.append({
            "seed": seed, "seconds_train_dr": t_dr, "seconds_train_youtube_dnn": t_yt,
            "seconds_evaluate": time.perf_counter() - t0, "paths": last["paths"],
            "dr_log": dr.log, "results": res,
        })
        log(f"{exp.name}: seed {seed}: " + ", ".join(
            f"{r['method']} R@{r['k']} {r['recall']:.4f}" for r in res if r["k"] == ks[0]))
        out = _write(exp, ds, runs, ks, results_dir, time.perf_counter() - t_start,
                     done=len(runs) - 1 == len(exp.seeds))  # after every seed: a stop keeps them
        log(f"wrote {Path(results_dir) / exp.name}/results.json and table.md "
            f"({len(runs) - 1} of {len(exp.seeds)} seeds)")
    return out


def _write(exp, ds, runs, ks, results_dir, seconds, done: bool) -> dict:
    seeds = [r["seed"] for r in runs if r["seed"] is not None]
    out = {
        "name": exp.name,
        "description": exp.description,
        "complete": done,  # False while seeds are still to come
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, nproc {os.cpu_count()}",
        "experiment": {**asdict(exp), "seeds": seeds, "seeds_planned": list(exp.seeds)},
        "dr_config": exp.dr(exp.seeds[0]).to_dict(),
        "dataset": {"n_items": ds.n_items, "n_train_users": len(ds.train),
                    "n_test_users": int((ds.test.truth.lengths > 0).sum()),
                    "n_val_users": len(ds.val)},
        "seconds_total": seconds,
        "summary": summarise(runs, ks),
        "runs": runs,
    }
    out["dr_config"]["train"]["seed"] = seeds
    target = check_output(Path(results_dir) / exp.name, "experiment")  # never into a foreign folder
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_json(target / "results.json", out)
    atomic_write_text(target / "table.md", table(out))
    return out


def summarise(runs: list[dict], ks: list[int]) -> dict:
    """{method: {k: {metric: {"mean", "std", "n"}}}} over the seeds (std with ddof = 1)."""
    acc: dict = {}
    for r in runs:
        for row in r["results"]:
            cell = acc.setdefault(row["method"], {}).setdefault(str(row["k"]), {})
            for m in (*METRICS, "items_scored_per_user"):
                cell.setdefault(m, []).append(row[m])
    return {
        method: {k: {m: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                         "n": len(v)} for m, v in cell.items()} for k, cell in per_k.items()}
        for method, per_k in acc.items()
    }


def recall_ratio(summ: dict, a: str, b: str, k) -> float:
    return summ[a][str(k)]["recall"]["mean"] / max(summ[b][str(k)]["recall"]["mean"], 1e-12)


def table(out: dict) -> str:
    """The paper-style markdown table: metrics in percent, mean ± std over the seeds."""
    exp, summ = out["experiment"], out["summary"]
    ks = [str(k) for k in exp["ks"]]
    seeds = exp["seeds"]
    head = ["method"] + [f"{m}@{k}" for k in ks for m in ("P", "R", "F", "NDCG")] + ["items scored"]
    lines = [
        f"# {out['name']}\n",
        (exp["description"] + "\n") if exp["description"] else "",
        "" if out.get("complete", True) else
        f"**Partial: {len(seeds)} of {len(exp['seeds_planned'])} seeds finished.**\n",
        f"`dr experiment` on {out['machine']}, {out['date']}. Metrics in percent on "
        f"{out['dataset']['n_test_users']:,} test users ({out['dataset']['n_items']:,} items), "
        f"mean ± std over seeds {', '.join(map(str, seeds))} (popularity and Item-CF have no seed); "
        f"training items {'excluded' if exp['exclude_history'] else 'not excluded'}.\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for method in [m for m in ORDER if m in summ] + [m for m in summ if m not in ORDER]:
        cells = [LABELS.get(method, method)]
        for k in ks:
            for m in METRICS:
                c = summ[method][k][m]
                cells.append(f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}" if c["n"] > 1
                             else f"{100 * c['mean']:.2f}")
        cells.append(f"{summ[method][ks[0]]['items_scored_per_user']['mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    dr_runs = [r for r in out["runs"] if r["seed"] is not None]
    tuned = next((r.get("tuned") for r in out["runs"] if r["seed"] is None), None)
    if tuned:
        lines.append("\nTuned on the validation users (recall@" + ks[0] + "): " + "; ".join(
            f"{m} " + ", ".join(f"{p}={v}" for p, v in t["params"].items()) for m, t in tuned.items()) + ".")
    def ratio(other):
        return ", ".join(f"@{k} {recall_ratio(summ, 'dr', other, k):.3f}" for k in ks)

    if "dr" in summ and "youtube-dnn" in summ:
        lines.append(f"\nDR recall / YouTube-DNN recall: {ratio('youtube-dnn')}.")
    if "dr" in summ and "dr-exact" in summ:
        lines.append(f"DR recall / its own reranker by brute force: {ratio('dr-exact')}.")
    if "dr+blend" in summ and "blend" in summ:
        lines.append("DR + blend recall / the blend by brute force: " + ", ".join(
            f"@{k} {recall_ratio(summ, 'dr+blend', 'blend', k):.3f}" for k in ks) + ".")
    if dr_runs:
        t = np.mean([r["seconds_train_dr"] for r in dr_runs])
        ty = np.mean([r["seconds_train_youtube_dnn"] for r in dr_runs])
        p = dr_runs[0]["paths"]
        lines.append(f"Training per seed: DR {t:.0f} s, YouTube-DNN {ty:.0f} s; whole experiment "
                     f"{out['seconds_total'] / 60:.1f} min. Seed {dr_runs[0]['seed']}'s paths: "
                     f"{p['non_empty']} non-empty, largest {p['largest']}, mean {p['mean']:.1f}.")
    return "\n".join(line for line in lines if line != "") + "\n"
