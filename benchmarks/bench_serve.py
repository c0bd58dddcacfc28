"""Load test of `dr serve` on a 1.5M-item model, with the in-process Retriever beside it.

The model is the real DRNet of the ``paper-amazon`` config (K=100, D=3, J=3, B=50, GRU
encoders of e=64, separate for the structure model and the reranker) at V = 1.5M items,
with RANDOM INITIAL WEIGHTS and a uniformly random valid path assignment: a serving
benchmark needs the shapes and the work, not trained quality (so the candidate counts are
those of a random assignment, about J*V/K^D = 4.5 items per path). It is built once under
--work and reused.

1. In-process, one thread (the same process, before the server starts): requests/s of
   ``Retriever.search`` alone on precomputed embeddings (batch 1), and of the whole answer
   the server computes (``Served.search``: torch encoder + Retriever), on the same histories.
2. ``dr serve`` in a subprocess, 1 worker (OPENBLAS_NUM_THREADS=1, its default 4 inference
   threads), and an asyncio client of raw keep-alive HTTP/1.1 connections (one per
   concurrent client; each sends one request, waits for its answer, sends the next) at 1, 8
   and 32 clients for --seconds each: req/s, p50, p99, errors (any status but 200 or any
   connection error) and the server's RSS sampled every 0.5 s.
3. A request with 150,000 histories sent while one client keeps sending single requests:
   its status (413 expected) and time, and the single requests' latencies during it against
   before it. Twice: random ids (1.6 MB, over the default --max-body: refused from its
   Content-Length) and one short id repeated (0.75 MB, under it: read, validated in the
   thread pool, refused on --max-histories).

Client and server share the 2 cores. Writes benchmarks/out/serve.json and serve.md.

    python benchmarks/bench_serve.py [--work /tmp/dr-serve-bench] [--seconds 15]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads its thread pool

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

OUT = Path(__file__).parent / "out"
V = 1_500_000
HIST_LEN = (5, 50)  # history lengths drawn uniformly from [5, 50)


def build_model(path: Path, seed: int = 0) -> None:
    """The paper-amazon DRNet at V items, random weights, a random valid assignment."""
    from deep_retrieval.config import Config
    from deep_retrieval.model import DeepRetrieval, DRNet
    from deep_retrieval.paths import random_assignment

    torch.manual_seed(seed)
    cfg = Config.builtin("paper-amazon")
    S = cfg.structure
    model = DeepRetrieval(cfg)
    model.net = DRNet(V, cfg)
    model.set_assignment(random_assignment(V, S.J, S.K**S.D, np.random.default_rng(seed)))
    model.item_ids = 10 + 3 * np.arange(V, dtype=np.int64)  # original ids differ from dense ones
    model.save(path)


def request_bodies(item_ids: np.ndarray, n: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = item_ids[rng.integers(0, len(item_ids), rng.integers(*HIST_LEN))]
        out.append(json.dumps({"history": h.tolist(), "k": 10}).encode())
    return out


def in_process(model_dir: Path, bodies: list[bytes], seconds: float) -> dict:
    """Single-thread requests/s of the Retriever alone and of the server's whole computation."""
    from deep_retrieval.serve import Served

    torch.set_num_threads(1)
    t = time.perf_counter()
    served = Served(model_dir)
    load_s = time.perf_counter() - t
    hists = [served.dense(json.loads(b)["history"], "history", known_only=False) for b in bodies]
    from deep_retrieval.data.dataset import Ragged, pad_ragged

    h, lens = pad_ragged(Ragged.from_lists(hists), served.model.config.encoder.max_seq_len)
    with torch.inference_mode():
        u_str, u_rr = served.model.net.encode(torch.from_numpy(h), torch.from_numpy(lens))
    u_str, u_rr = u_str.numpy(), u_rr.numpy()

    def rate(fn) -> tuple[float, float, float]:
        lat, t0, i = [], time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            s = time.perf_counter()
            fn(i % len(hists))
            lat.append(time.perf_counter() - s)
            i += 1
        lat = np.array(lat) * 1e3
        return len(lat) / (time.perf_counter() - t0), float(np.median(lat)), float(np.percentile(lat, 99))

    cand = []

    def retriever_only(i):
        cand.append(served.model.retriever().search(u_str[i : i + 1], u_rr[i : i + 1], 10, served.B)[2][0])

    r_rps, r_p50, r_p99 = rate(retriever_only)
    rng = np.random.default_rng(3)
    exclude, allow_small = rng.choice(V, 100, replace=False), rng.choice(V, 10_000, replace=False)

    def filtered(i, allow):
        served.model.retriever().search(u_str[i : i + 1], u_rr[i : i + 1], 10, served.B, drop=[hists[i]],
                                exclude=exclude, allow=allow)

    x_rps, x_p50, _ = rate(lambda i: filtered(i, None))
    a_rps, a_p50, _ = rate(lambda i: filtered(i, allow_small))
    f_rps, f_p50, f_p99 = rate(lambda i: served.search([hists[i]], 10, served.B))
    return {"model_load_s": round(load_s, 2), "candidates_per_user_median": float(np.median(cand)),
            "retriever_req_s": round(r_rps, 1), "retriever_p50_ms": round(r_p50, 3),
            "retriever_p99_ms": round(r_p99, 3),
            "retriever_exclude_history_and_100_excluded_p50_ms": round(x_p50, 3),
            "retriever_same_plus_10k_allowed_p50_ms": round(a_p50, 3),
            "encode_and_retrieve_req_s": round(f_rps, 1), "encode_and_retrieve_p50_ms": round(f_p50, 3),
            "encode_and_retrieve_p99_ms": round(f_p99, 3)}


# ---------------------------------------------------------------------------- the client
async def one_request(reader, writer, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /recommend HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n" % len(body) + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def client_loop(port, bodies, stop_at, lat, errors, offset):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        errors.append("connect")
        return
    i = offset
    try:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                status, _ = await one_request(reader, writer, bodies[i % len(bodies)])
            except (OSError, asyncio.IncompleteReadError) as e:
                errors.append(type(e).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            lat.append(time.perf_counter() - t)
            if status != 200:
                errors.append(status)
            i += 1
    finally:
        writer.close()


def load_level(port: int, bodies: list[bytes], clients: int, seconds: float, pid: int) -> dict:
    lat, errors, rss = [], [], []
    proc = psutil.Process(pid)
    done = threading.Event()

    def sample():
        t0 = time.perf_counter()
        while not done.is_set():
            rss.append((round(time.perf_counter() - t0, 1), proc.memory_info().rss >> 20))
            done.wait(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()

    async def main():
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(client_loop(port, bodies, stop_at, lat, errors, 97 * c)
                               for c in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    ms = np.array(lat) * 1e3
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(lat),
            "req_s": round(len(lat) / wall, 1), "p50_ms": round(float(np.median(ms)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "errors": len(errors),
            "error_kinds": sorted({str(e) for e in errors}),
            "rss_mb_min": min(r for _, r in rss), "rss_mb_max": max(r for _, r in rss), "rss_mb": rss}


def big_request(port: int, big: bytes, n_hist: int, bodies: list[bytes]) -> dict:
    """One request of n_hist histories, while one client keeps sending single requests."""

    async def singles(seconds):
        """(start, end, status) of back-to-back single requests on one connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out, t_end, i = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            status, _ = await one_request(reader, writer, bodies[i % len(bodies)])
            out.append((t, time.perf_counter(), status))
            i += 1
        writer.close()
        return out

    async def main():
        before = await singles(2.0)
        background = asyncio.ensure_future(singles(3.0))
        await asyncio.sleep(0.5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t = time.perf_counter()
        status, payload = await one_request(reader, writer, big)
        t_end = time.perf_counter()
        writer.close()
        during = [x for x in await background if x[1] >= t and x[0] <= t_end]  # overlapping the big one
        return before, during, status, payload, t_end - t

    before, during, status, payload, big_s = asyncio.run(main())
    before = [((e - s) * 1e3, st) for s, e, st in before]
    during = [((e - s) * 1e3, st) for s, e, st in during]
    b = np.array([x for x, _ in before])
    d = np.array([x for x, _ in during])
    return {"histories": n_hist, "body_bytes": len(big), "status": status,
            "answer": payload.decode()[:200], "seconds": round(big_s, 3),
            "single_p50_ms_before": round(float(np.median(b)), 2),
            "single_during_n": len(d), "single_max_ms_during": round(float(d.max()), 2) if len(d) else None,
            "single_p50_ms_during": round(float(np.median(d)), 2) if len(d) else None,
            "single_errors_during": sum(s != 200 for _, s in during)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/dr-serve-bench")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--levels", default="1,8,32")
    args = ap.parse_args()
    work = Path(args.work)
    model_dir = work / "model-1p5m"
    if not (model_dir / "meta.json").exists():
        t = time.perf_counter()
        build_model(model_dir)
        print(f"built {model_dir} in {time.perf_counter() - t:.1f} s", flush=True)
    item_ids = np.load(model_dir / "item_ids.npy")
    bodies = request_bodies(item_ids, 2000)

    inproc = in_process(model_dir, bodies, min(args.seconds, 10.0))
    print("in-process:", json.dumps(inproc), flush=True)

    port = free_port()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "deep_retrieval.cli", "serve", str(model_dir),
                               "--port", str(port), "--workers", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    levels, big = [], None
    try:
        t = time.perf_counter()
        while True:  # the port listens before the model is loaded: wait for /health
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.perf_counter() - t > 300:
                    raise SystemExit(f"server did not start: {server.stdout.read()}") from None
                time.sleep(0.2)
        startup_s = time.perf_counter() - t
        for c in (int(x) for x in args.levels.split(",")):
            levels.append(load_level(port, bodies, c, args.seconds, server.pid))
            lv = {k: v for k, v in levels[-1].items() if k != "rss_mb"}
            print("load:", json.dumps(lv), flush=True)
        n_hist = 150_000
        rng = np.random.default_rng(2)
        random_ids = item_ids[rng.integers(0, len(item_ids), n_hist)].tolist()
        # random ids: 1.6 MB, over --max-body (refused from Content-Length); one short id
        # repeated: under it, so the server reads and validates it and refuses it on the count
        over = json.dumps({"histories": [[x] for x in random_ids]}).encode()
        under = json.dumps({"histories": [[int(item_ids[0])]] * n_hist}, separators=(",", ":")).encode()
        big = {"over_body_cap": big_request(port, over, n_hist, bodies),
               "under_body_cap": big_request(port, under, n_hist, bodies)}
        print("150k histories:", json.dumps(big), flush=True)
        server.terminate()
        rc = server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    top = levels[-1]
    targets = {
        "zero_errors": all(lv["errors"] == 0 for lv in levels)
        and all(b["single_errors_during"] == 0 for b in big.values()),
        "req_s_at_32_vs_retriever": round(top["req_s"] / inproc["retriever_req_s"], 3),
        "req_s_at_32_vs_encode_and_retrieve": round(top["req_s"] / inproc["encode_and_retrieve_req_s"], 3),
        "p99_ms_at_32": top["p99_ms"],
        "big_request_refused_413": all(b["status"] == 413 for b in big.values()),
        "big_request_max_delay_ms": max(b["single_max_ms_during"] or 0 for b in big.values()),
    }
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
              "model": f"paper-amazon DRNet, V={V}, random weights and assignment",
              "server": "dr serve, 1 worker, 4 inference threads, OPENBLAS_NUM_THREADS=1",
              "server_startup_s": round(startup_s, 1), "server_exit_code_after_sigterm": rc,
              "in_process": inproc, "levels": levels, "big_request": big, "targets": targets}
    OUT.mkdir(exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ["| clients | req/s | p50 ms | p99 ms | errors | server RSS MB (min-max) |",
          "|---|---|---|---|---|---|"]
    md += [f"| {lv['clients']} | {lv['req_s']} | {lv['p50_ms']} | {lv['p99_ms']} | {lv['errors']} | "
           f"{lv['rss_mb_min']}-{lv['rss_mb_max']} |" for lv in levels]
    md += ["", f"In-process, one thread, same run: Retriever.search {inproc['retriever_req_s']} req/s "
           f"(p50 {inproc['retriever_p50_ms']} ms, {inproc['candidates_per_user_median']:.0f} candidates); "
           f"encoder + Retriever {inproc['encode_and_retrieve_req_s']} req/s "
           f"(p50 {inproc['encode_and_retrieve_p50_ms']} ms). Filters, Retriever p50: exclude_history + "
           f"100 excluded ids {inproc['retriever_exclude_history_and_100_excluded_p50_ms']} ms, plus an "
           f"allow-list of 10,000 ids {inproc['retriever_same_plus_10k_allowed_p50_ms']} ms.",
           f"At 32 clients the service gives {targets['req_s_at_32_vs_retriever']:.2f}x the Retriever's "
           f"rate and {targets['req_s_at_32_vs_encode_and_retrieve']:.2f}x the encoder + Retriever rate.",
           *(f"150,000 histories, {b['body_bytes']:,} bytes ({name}): status {b['status']} in "
             f"{b['seconds']} s, {b['answer']}; single requests meanwhile: {b['single_during_n']}, max "
             f"{b['single_max_ms_during']} ms (p50 before {b['single_p50_ms_before']} ms)."
             for name, b in big.items())]
    (OUT / "serve.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
