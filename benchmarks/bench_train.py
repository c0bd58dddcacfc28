"""Training speed: E-step throughput of DR + reranker against the reranker alone, one full EM
epoch, and the resident memory of training at 10^7 items.

    python benchmarks/bench_train.py [--ml1m /tmp/w/ml1m] [--workdir /tmp/dr-bench]
        [--steps 60] [--epoch-max-examples 100000] [--big-items 10000000] [--big-steps 300]
        [--parts throughput,epoch,memory] [--no-readme]

Every measurement runs in its own child process (peak RSS = the child's ``ru_maxrss``).

- **throughput**: examples per second of training steps, batch 256, 1 torch thread,
  ``--steps`` timed steps after 5 warm-up steps, exactly train.py's joint-phase step
  (batch gathering, the multi-path structure loss + sampled softmax, the optimisers that
  ``train.make_optimizers`` builds) against the reranker alone (the same encoder module
  and reranker taken from the same DRNet, the same optimisers built over just those, loss
  = ``Reranker.sampled_softmax_loss``). Mean-pool and GRU encoders; ml-1m with the ``ml1m``
  config and a 10^6-item synthetic set with ``paper-amazon``. Target: ratio >= 0.5.
- **epoch**: wall time of ``DeepRetrieval(cfg).fit`` with 1 joint epoch (E-step, M-step,
  validation): ml-1m with ``ml1m`` and ``em.mstep_every = 0``; the 10^6-item set with
  ``paper-amazon`` and ``encoder.kind = "mean"``, torch threads left default, limited to
  ``--epoch-max-examples`` examples (a full epoch of ~6.5M examples would take hours: the
  full-epoch time is extrapolated from the measured rates and marked as such).
- **memory**: peak RSS of training at ``--big-items`` items: ``paper-amazon`` with
  ``encoder.shared = true``, ``item_dim = 32``, mean encoder, ``--big-steps`` joint steps on
  Zipf-random histories, no M-step; the model state train.py allocates at the start
  (assignment, path index) is included, the (V, S) score table is not (its size is given).

The 10^6-item set (1M items, 200k users, 6.7M interactions) is generated once into
``--workdir``. Writes benchmarks/out/train.json and appends a section to
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BATCH = 256
WARMUP = 5
RATIO_TARGET = 0.5
MEMORY_LIMIT_GIB = 24.0
SYNTH_1M = dict(n_items=1_000_000, n_users=200_000, n_interactions=6_700_000,
                val_users=1000, test_users=1000, seed=0)
DATA_CONFIG = {"ml1m": "ml1m", "synth1m": "paper-amazon"}


# ------------------------------------------------------------------------- helpers
def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def make_opts(module, lr, weight_decay):
    """The optimisers train.py builds (``make_optimizers`` once it exists, else Adam)."""
    import torch

    from deep_retrieval import train

    if hasattr(train, "make_optimizers"):
        return train.make_optimizers(module, lr, weight_decay)
    return [torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)]


def load_data(name: str, args):
    from deep_retrieval.data.dataset import Dataset

    if name == "ml1m":
        return Dataset.load(args["ml1m"])
    return Dataset.load(Path(args["workdir"]) / "synth1m")


def config_for(name: str, kind: str, shared: bool | None = None, **train):
    from deep_retrieval.config import Config

    cfg = Config.builtin(DATA_CONFIG[name])
    cfg.encoder.kind = kind
    if shared is not None:
        cfg.encoder.shared = shared
    cfg.train.progress = False
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg.validate()


def sparse_of(cfg, V: int) -> bool:
    from deep_retrieval import model

    f = getattr(model, "uses_sparse_embeddings", None)
    return bool(f(cfg, V)) if f else False


class Steps:
    """train.py's joint-phase training step, or the reranker-alone step."""

    def __init__(self, ex, V: int, cfg, mode: str, counts: np.ndarray):
        import torch

        from deep_retrieval.model import DRNet
        from deep_retrieval.paths import random_assignment

        self.ex, self.cfg, self.mode = ex, cfg, mode
        S = cfg.structure
        self.net = DRNet(V, cfg, item_counts=counts)
        self.assignment = random_assignment(V, S.J, S.K**S.D, np.random.default_rng(0))
        if mode == "dr":
            self.opts = make_opts(self.net, cfg.train.lr, cfg.train.weight_decay)
        else:  # the reranker's own encoder and the reranker, nothing else
            enc = self.net.enc_str if self.net.enc_rr is None else self.net.enc_rr
            self.rr = torch.nn.ModuleDict({"encoder": enc, "reranker": self.net.reranker})
            self.opts = make_opts(self.rr, cfg.train.lr, cfg.train.weight_decay)
            self.net.structure = None  # not part of this model
            if self.net.enc_rr is not None:
                self.net.enc_str = None

    def step(self, idx: np.ndarray) -> float:
        import torch

        from deep_retrieval.structure import from_flat

        S = self.cfg.structure
        net = self.net
        net.train()
        hist, lengths, y = self.ex.batch(idx)
        if self.mode == "dr":  # as train.fit, joint phase
            paths = from_flat(torch.from_numpy(self.assignment[self.ex.targets[idx]]), S.K, S.D)
            u_str, u_rr = net.encode(hist, lengths)
            loss_str = net.structure.multipath_loss(u_str, paths)
            loss_sm = net.reranker.sampled_softmax_loss(u_rr, y)
            loss = loss_str + loss_sm
            loss_sm.item()
        else:
            u = self.rr["encoder"](hist, lengths)
            loss = loss_str = net.reranker.sampled_softmax_loss(u, y)
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.opts:
            opt.step()
        return loss_str.item()


class RandomExamples:
    """Zipf-random training pairs over V items (histories of 1..max_len items)."""

    def __init__(self, V: int, max_len: int, n_counts: int = 20_000_000, seed: int = 0):
        self.V, self.max_len = V, max_len
        self.rng = np.random.default_rng(seed)
        self.targets = self._items(n_counts)  # N_v for the unigram sampler

    def _items(self, n):
        r = np.minimum(self.rng.zipf(1.1, n) - 1, self.V - 1)
        return (r * 7919 + 13) % self.V

    def __len__(self):
        return len(self.targets)

    def batch(self, idx):
        import torch

        b = len(idx)
        lengths = self.rng.integers(1, self.max_len + 1, b)
        hist = self._items(b * self.max_len).reshape(b, self.max_len)
        hist[np.arange(self.max_len)[None, :] >= lengths[:, None]] = -1
        return torch.from_numpy(hist), torch.from_numpy(lengths), torch.from_numpy(self.targets[idx])


# --------------------------------------------------------------------- child parts
def child_throughput(a: dict) -> dict:
    import torch

    from deep_retrieval.train import Examples

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = load_data(a["data"], a)
    cfg = config_for(a["data"], a["kind"], a.get("shared"))
    ex = Examples(ds, cfg.encoder.max_seq_len, cfg.train.context)
    counts = np.bincount(ex.targets, minlength=ds.n_items)
    st = Steps(ex, ds.n_items, cfg, a["mode"], counts)
    order = np.random.default_rng(0).permutation(len(ex))
    n = WARMUP + a["steps"]
    batches = [order[i * BATCH : (i + 1) * BATCH] for i in range(n)]
    for idx in batches[:WARMUP]:
        st.step(idx)
    t0 = time.perf_counter()
    for idx in batches[WARMUP:]:
        st.step(idx)
    dt = time.perf_counter() - t0
    return {"examples_per_s": a["steps"] * BATCH / dt, "seconds": dt, "steps": a["steps"],
            "shared_encoder": cfg.encoder.shared, "sparse_embeddings": sparse_of(cfg, ds.n_items),
            "n_items": ds.n_items, "torch_threads": 1, "peak_rss_gib": peak_gib()}


def child_epoch(a: dict) -> dict:
    import torch

    from deep_retrieval.model import DeepRetrieval
    from deep_retrieval.train import Examples

    ds = load_data(a["data"], a)
    extra = {"max_examples_per_epoch": a["max_examples"]} if a.get("max_examples") else {}
    cfg = config_for(a["data"], a["kind"], epochs_joint=1, epochs_dr=0, **extra)
    if a["data"] == "ml1m":
        cfg.em.mstep_every = 0
    n_examples = len(Examples(ds, cfg.encoder.max_seq_len, cfg.train.context))
    t0 = time.perf_counter()
    model = DeepRetrieval(cfg).fit(ds, log=lambda m: print(m, file=sys.stderr))
    wall = time.perf_counter() - t0
    e = model.log[-1]
    keys = ("examples", "seconds_e_step", "seconds_m_step", "seconds_score_collection",
            "seconds_coordinate_descent", "Q_str", "val_recall@10")
    out = {"wall_s": wall, "examples_in_epoch": n_examples, "torch_threads": torch.get_num_threads(),
           "n_items": ds.n_items, "peak_rss_gib": peak_gib(), **{k: e.get(k) for k in keys}}
    out["seconds_validation"] = wall - e["seconds_e_step"] - e["seconds_m_step"]
    if e["examples"] < n_examples:  # extrapolate the full epoch from the measured rates
        f = n_examples / e["examples"]
        out["full_epoch_s_extrapolated"] = (
            f * (e["seconds_e_step"] + e["seconds_score_collection"])
            + e["seconds_coordinate_descent"] + out["seconds_validation"]
        )
    return out


def child_memory(a: dict) -> dict:
    import torch

    from deep_retrieval.config import Config
    from deep_retrieval.paths import PathIndex

    torch.set_num_threads(1)
    torch.manual_seed(0)
    V = a["items"]
    cfg = Config.builtin("paper-amazon")
    cfg.encoder.kind, cfg.encoder.shared, cfg.encoder.item_dim = "mean", True, 32
    cfg.validate()
    ex = RandomExamples(V, cfg.encoder.max_seq_len)
    counts = np.bincount(ex.targets, minlength=V)
    rss0 = peak_gib()
    st = Steps(ex, V, cfg, "dr", counts)
    index = PathIndex(st.assignment)  # what DeepRetrieval.set_assignment builds
    t0 = time.perf_counter()
    for i in range(a["steps"]):
        st.step(np.arange(i * BATCH, (i + 1) * BATCH) % len(ex))
    dt = time.perf_counter() - t0
    del index
    S = cfg.em.S
    return {"n_items": V, "steps": a["steps"], "examples_per_s": a["steps"] * BATCH / dt,
            "sparse_embeddings": sparse_of(cfg, V),
            "peak_rss_gib": peak_gib(), "rss_gib_before_model": rss0,
            "config": "paper-amazon, encoder shared, item_dim 32, mean",
            "score_table_gib": V * S * 12 / 2**30, "S": S,
            "parameters": sum(p.numel() for p in st.net.parameters())}


# --------------------------------------------------------------------------- driver
def run_child(spec: dict) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return {**spec, "error": " ".join(r.stderr.strip().splitlines()[-1:])}
    out = {**spec, **json.loads(r.stdout.strip().splitlines()[-1])}
    out["process_wall_s"] = time.perf_counter() - t0
    print(json.dumps(out), flush=True)
    return out


def ensure_synth(workdir: Path) -> None:
    out = workdir / "synth1m"
    if (out / "manifest.json").exists():
        return
    workdir.mkdir(parents=True, exist_ok=True)
    code = ("import sys; from deep_retrieval.data.synth import SynthConfig, synth; "
            f"synth(sys.argv[1], SynthConfig(**{SYNTH_1M!r}))")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ml1m", default="/tmp/w/ml1m", help="prepared ml-1m (dr prepare pairs.csv.gz)")
    ap.add_argument("--workdir", default="/tmp/dr-bench", help="where the 10^6-item set is cached")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--epoch-max-examples", type=int, default=100_000)
    ap.add_argument("--big-items", type=int, default=10_000_000)
    ap.add_argument("--big-steps", type=int, default=300)
    ap.add_argument("--parts", default="throughput,epoch,memory")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        a = json.loads(args.child)
        fn = {"throughput": child_throughput, "epoch": child_epoch, "memory": child_memory}[a["part"]]
        print(json.dumps(fn(a)))
        return

    parts = args.parts.split(",")
    common = {"ml1m": args.ml1m, "workdir": args.workdir}
    datasets = ["ml1m", "synth1m"]
    if not Path(args.ml1m, "manifest.json").exists():
        print(f"no prepared ml-1m at {args.ml1m} (dr prepare .../ml-1m/pairs.csv.gz --out {args.ml1m}): "
              "skipping it", file=sys.stderr)
        datasets.remove("ml1m")
    if "throughput" in parts or "epoch" in parts:
        ensure_synth(Path(args.workdir))
    res: dict = {"throughput": [], "epoch": [], "memory": None}
    if "throughput" in parts:
        for data in datasets:
            for kind in ("mean", "gru"):
                # as configured (separate encoders), the reranker alone, DR with one shared encoder
                for mode, shared in (("dr", None), ("rr", None), ("dr-shared", True)):
                    res["throughput"].append(run_child({
                        "part": "throughput", "data": data, "kind": kind, "mode": mode.split("-")[0],
                        "variant": mode, "shared": shared, "steps": args.steps, **common}))
    if "epoch" in parts:
        for data in datasets:
            res["epoch"].append(run_child({
                "part": "epoch", "data": data, "kind": "mean", **common,
                "max_examples": args.epoch_max_examples if data == "synth1m" else 0}))
    if "memory" in parts:
        res["memory"] = run_child({"part": "memory", "items": args.big_items, "steps": args.big_steps})

    date = datetime.date.today().isoformat()
    machine = f"{platform.platform()}, nproc {os.cpu_count()}"
    command = ("python benchmarks/bench_train.py " + " ".join(sys.argv[1:])).strip()
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "train.json").write_text(json.dumps(
        {"benchmark": "train", "date": date, "machine": machine, "command": command,
         "ratio_target": RATIO_TARGET, **res}, indent=2) + "\n")
    if not args.no_readme:
        write_readme(res, command, machine, date)
    print(f"wrote {HERE / 'out' / 'train.json'}")


def write_readme(res: dict, command: str, machine: str, date: str) -> None:
    L = [f"\n## Training speed and memory ({date})\n",
         f"`{command}` on {machine}; the machine was shared with other jobs, so the figures "
         "are upper bounds on time. Each measurement ran in its own child process.\n"]
    tp = {(r["data"], r["kind"], r["variant"]): r for r in res["throughput"]}
    if tp:
        L += ["E-step throughput, batch 256, 1 torch thread (examples/s):\n",
              "DR as configured has separate encoders for the structure model and the reranker "
              "(`encoder.shared = false`); the last two columns share one. Item embeddings: "
              "sparse gradients + SparseAdam where `train.sparse_embeddings` (auto) turns them on.\n",
              "| data (config) | encoder | DR + reranker | reranker alone | ratio | target >= 0.5 "
              "| DR + reranker, shared encoder | ratio |",
              "|---|---|---|---|---|---|---|---|"]
        for data in ("ml1m", "synth1m"):
            for kind in ("mean", "gru"):
                dr, rr = tp.get((data, kind, "dr")), tp.get((data, kind, "rr"))
                if not dr or not rr:
                    continue
                if "error" in dr or "error" in rr:
                    L.append(f"| {data} | {kind} | failed: {dr.get('error') or rr.get('error')} ||||")
                    continue
                ratio = dr["examples_per_s"] / rr["examples_per_s"]
                sh = tp.get((data, kind, "dr-shared"), {})
                shared = (f"{sh['examples_per_s']:,.0f} | {sh['examples_per_s'] / rr['examples_per_s']:.2f}"
                          if "examples_per_s" in sh else "- | -")
                L.append(f"| {data} ({DATA_CONFIG[data]}, {dr['n_items']:,} items) | {kind} | "
                         f"{dr['examples_per_s']:,.0f} | {rr['examples_per_s']:,.0f} | {ratio:.2f} | "
                         f"{'met' if ratio >= RATIO_TARGET else 'MISSED'} | {shared} |")
        L.append("")
    if res["epoch"]:
        L += ["One EM epoch (`DeepRetrieval(cfg).fit`, 1 joint epoch, mean encoder, "
              "torch threads default):\n",
              "| data (config) | examples | wall (s) | E-step (s) | score collection (s) | CD (s) "
              "| validation (s) | full epoch (s) | peak RSS (GiB) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in res["epoch"]:
            if "error" in r:
                L.append(f"| {r['data']} | failed: {r['error']} ||||||||")
                continue
            full = (f"{r['full_epoch_s_extrapolated']:,.0f} (extrapolated from {r['examples']:,} of "
                    f"{r['examples_in_epoch']:,} examples)" if "full_epoch_s_extrapolated" in r
                    else f"{r['wall_s']:.0f} (measured)")
            L.append(f"| {r['data']} ({DATA_CONFIG[r['data']]}) | {r['examples']:,} | {r['wall_s']:.0f} | "
                     f"{r['seconds_e_step']:.0f} | {r['seconds_score_collection']:.0f} | "
                     f"{r['seconds_coordinate_descent']:.1f} | {r['seconds_validation']:.0f} | {full} | "
                     f"{r['peak_rss_gib']:.1f} |")
        L.append("")
    m = res["memory"]
    if m and "error" not in m:
        met = "met" if m["peak_rss_gib"] + m["score_table_gib"] < MEMORY_LIMIT_GIB else "MISSED"
        L.append(f"- training at {m['n_items']:,} items ({m['config']}; {m['parameters']:,} parameters): "
                 f"peak RSS {m['peak_rss_gib']:.1f} GiB over {m['steps']} steps ({m['examples_per_s']:,.0f} "
                 f"examples/s, 1 thread), no M-step; the M-step's (V, S = {m['S']}) score table adds "
                 f"{m['score_table_gib']:.1f} GiB: {m['peak_rss_gib'] + m['score_table_gib']:.1f} GiB "
                 f"against {MEMORY_LIMIT_GIB:.0f} GiB, {met}")
    elif m:
        L.append(f"- training at 10^7 items: failed: {m['error']}")
    with open(HERE / "README.md", "a") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
