"""The multi-path structure loss, forward + backward: ``StructureModel.multipath_loss_multi``
against the direct per-pair computation it replaced (each (user, target) pair's paths through
every layer's whole first Linear on the concatenated input, layer 0 once per pair).

    python benchmarks/bench_structure_loss.py [--K 100] [--D 2] [--e 256] [--hidden 256]
        [--users 1024] [--targets 9.4,60] [--repeats 5] [--threads 1]

Targets per user: the mean number of (user, target) pairs per user of a batch, e.g. 9.4 for
amazon-book's training users (train.context = "user") and 60 with ``train.distill = 50``.
Both computations are timed in the same run on the same weights (best of ``--repeats``), and
their losses compared. Writes benchmarks/out/structure_loss.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from deep_retrieval.config import StructureConfig
from deep_retrieval.structure import StructureModel

OUT = Path(__file__).resolve().parent / "out"


def direct_loss(m: StructureModel, u: torch.Tensor, paths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loss of ``multipath_loss_multi``, one layer at a time on each pair's own rows."""
    b, t = torch.nonzero(mask, as_tuple=True)
    up, pp = u[b], paths[b, t]  # (N, e), (N, J, D)
    N, J, D = pp.shape
    total = m.layer_logprobs(up, pp[:, 0, :0]).gather(1, pp[:, :, 0])  # (N, J)
    flat, uu = pp.reshape(N * J, D), up[:, None, :].expand(N, J, -1).reshape(N * J, -1)
    for d in range(1, D):
        total = total + m.layer_logprobs(uu, flat[:, :d]).gather(1, flat[:, d : d + 1]).view(N, J)
    nll = -torch.logsumexp(total, dim=1)  # (N,)
    n = mask.sum(1)
    per_user = torch.zeros(len(u), dtype=nll.dtype).index_add(0, b, nll)
    return (per_user[n > 0] / n[n > 0]).mean()


def timed(fn, repeats: int) -> tuple[float, float]:
    best, loss = float("inf"), float("nan")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        out.backward()
        best, loss = min(best, time.perf_counter() - t), out.item()
    return best, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, default=100)
    ap.add_argument("--D", type=int, default=2)
    ap.add_argument("--J", type=int, default=3)
    ap.add_argument("--e", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--targets", default="9.4,60")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = StructureModel(StructureConfig(K=a.K, D=a.D, J=a.J, hidden=[a.hidden]), a.e)
    rows = []
    for per_user in (float(x) for x in a.targets.split(",")):
        T = int(per_user * 2)
        u = torch.randn(a.users, a.e, requires_grad=True)
        paths = torch.randint(0, a.K, (a.users, T, a.J, a.D))
        mask = torch.rand(a.users, T) < per_user / T
        t_new, l_new = timed(lambda: m.multipath_loss_multi(u, paths, mask), a.repeats)  # noqa: B023
        t_old, l_old = timed(lambda: direct_loss(m, u, paths, mask), a.repeats)  # noqa: B023
        rows.append({"targets_per_user": per_user, "pairs": int(mask.sum()), "direct_s": t_old,
                     "multipath_loss_multi_s": t_new, "speedup": t_old / t_new,
                     "loss_direct": l_old, "loss": l_new})
        print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(exist_ok=True)
    cmd = "python benchmarks/bench_structure_loss.py " + " ".join(
        f"--{k} {v}" for k, v in vars(a).items())
    (OUT / "structure_loss.json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=2) + "\n")
    md = [f"`{cmd}`", "",
          "| pairs per user | pairs | direct (s) | multipath_loss_multi (s) | speed-up | losses |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['targets_per_user']} | {r['pairs']:,} | {r['direct_s']:.3f} "
           f"| {r['multipath_loss_multi_s']:.3f} | {r['speedup']:.2f}x "
           f"| {r['loss_direct']:.5f} / {r['loss']:.5f} |" for r in rows]
    (OUT / "structure_loss.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
