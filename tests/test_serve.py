"""The HTTP service (serve.py) against the torch oracle DeepRetrieval.recommend: answers, filters,
every error status, caps, strict types, hot reload, the OpenAPI schema, graceful shutdown."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
import schemathesis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from deep_retrieval.cli import main  # noqa: E402
from deep_retrieval.model import DeepRetrieval  # noqa: E402
from deep_retrieval.serve import INLINE_BODY, Limits, Served, create_app  # noqa: E402
from tests.test_contract import synthetic_dataset  # noqa: E402
from tests.test_fast import same_up_to_ties  # noqa: E402
from tests.test_model import quiet, tiny_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LIMITS = Limits(max_histories=8, max_history_len=50, max_k=30, max_beam=64, max_filter=100, max_body=25_000)
HISTORIES = [[1000, 1007, 1014], [1021], [1000, 1140, 1133, 1063, 1007], [1070, 1077]]


def train(tmp: Path, name: str, seed: int, item_ids) -> Path:
    torch.set_num_threads(1)
    ds = dataclasses.replace(synthetic_dataset(seed=seed), item_ids=item_ids)
    cfg = tiny_config(structure__K=4, structure__D=2, beam__B=3, train__threads=1, train__seed=seed)
    DeepRetrieval(cfg).fit(ds, log=quiet).save(tmp / name)
    return tmp / name


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ids = 1000 + 7 * np.arange(40)  # original ids differ from the dense indices
    one, two = train(tmp, "one", 5, ids), train(tmp, "two", 6, ids)
    strings = tmp / "strings"
    shutil.copytree(one, strings)
    np.save(strings / "item_ids.npy", np.array([f"i{x}" for x in ids]), allow_pickle=False)
    broken = tmp / "broken"
    shutil.copytree(one, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    return {"one": one, "two": two, "strings": strings, "broken": broken}


@pytest.fixture
def client(dirs):
    with TestClient(create_app(Served(dirs["one"]), LIMITS), raise_server_exceptions=False) as c:
        yield c


def oracle(model_dir, hists, k, exclude_history=False, B=None):
    """The torch path, in original ids."""
    model = DeepRetrieval.load(model_dir)
    ids, scores = model.recommend([model.dense_ids(h) for h in hists], k, exclude_history, B=B)
    return model, ids, scores


def check_like_oracle(results, model, ids, scores, cand=None):
    for r, got in enumerate(results):
        keep = ids[r] >= 0
        assert len(got["items"]) == keep.sum()
        dense = model.dense_ids(got["items"])
        same_up_to_ties(dense[None], np.array(got["scores"], np.float32)[None],
                        ids[r][keep][None], scores[r][keep][None])
        if cand is not None:
            assert got["candidates"] == cand[r]


def is_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"]
    return body["error"]


# ---------------------------------------------------------------------------- answers
def test_health_ignores_query_strings(client, dirs):
    for url in ("/health", "/health?x=1"):
        body = client.get(url).json()
        assert body["status"] == "ok" and body["model"]["n_items"] == 40
        assert body["model"]["path"] == str(dirs["one"].resolve()) and len(body["model"]["version"]) == 12
        assert body["model"]["loaded_at"].endswith("+00:00") and body["reloads"] == 0


def test_recommend_equals_the_torch_path(client, dirs):
    model, ids, scores = oracle(dirs["one"], HISTORIES, 5)
    r = client.post("/recommend", json={"histories": HISTORIES, "k": 5})
    version = client.get("/health").json()["model"]["version"]
    assert r.status_code == 200 and r.headers["x-model-version"] == version
    check_like_oracle(r.json()["results"], model, ids, scores)
    one = client.post("/recommend", json={"history": HISTORIES[2], "k": 5}).json()
    check_like_oracle([one], model, ids[2:3], scores[2:3])
    dense = client.post("/recommend", json={"history": model.dense_ids(HISTORIES[2]).tolist(), "k": 5,
                                            "dense": True}).json()
    assert dense["items"] == model.dense_ids(one["items"]).tolist() and dense["scores"] == one["scores"]
    for B in (1, 7):
        model, ids, scores = oracle(dirs["one"], HISTORIES, 4, exclude_history=True, B=B)
        got = client.post("/recommend", json={"histories": HISTORIES, "k": 4, "beam": B,
                                              "exclude_history": True}).json()["results"]
        check_like_oracle(got, model, ids, scores, model.last_items_scored)
        assert not any(set(g["items"]) & set(h) for g, h in zip(got, HISTORIES, strict=True))


def test_exclude_and_allow(client, dirs):
    model, ids, scores = oracle(dirs["one"], HISTORIES, 40)  # every candidate, ranked
    exclude, allow = [1000, 1021, 1077, 99999], [1000, 1007, 1014, 1028, 1035, 1042, 1049, 1056, 123]
    got = client.post("/recommend", json={"histories": HISTORIES, "k": 3, "exclude": exclude,
                                          "allow": allow}).json()["results"]
    for r, g in enumerate(got):
        ok = ids[r] >= 0
        full, full_s = model.item_ids[ids[r][ok]], scores[r][ok]
        keep = np.isin(full, allow) & ~np.isin(full, exclude)
        want, want_s = full[keep][:3], full_s[keep][:3]
        assert g["candidates"] == keep.sum()  # unknown ids in the filters are ignored
        same_up_to_ties(model.dense_ids(g["items"])[None], np.array(g["scores"], np.float32)[None],
                        model.dense_ids(want.tolist())[None], want_s[None])
    none = client.post("/recommend", json={"history": [1000], "allow": []}).json()
    assert none == {"items": [], "scores": [], "candidates": 0}


def test_string_ids_are_strict(dirs):
    with TestClient(create_app(Served(dirs["strings"]), LIMITS)) as c:
        ok = c.post("/recommend", json={"history": ["i1000", "i1007"], "k": 3}).json()
        assert len(ok["items"]) == 3 and all(x.startswith("i") for x in ok["items"])
        assert "strings" in is_error(c.post("/recommend", json={"history": [1000]}), 422)
    with TestClient(create_app(Served(dirs["one"]), LIMITS)) as c:
        assert "integers" in is_error(c.post("/recommend", json={"history": ["1000"]}), 422)
        assert "integers" in is_error(c.post("/recommend", json={"history": [1000], "exclude": ["1"]}), 422)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("body, status, needle", [
    (b"{", 400, "not valid JSON"),
    (b"[" * 50_000 + b"]" * 50_000, 413, "over the limit"),  # over max_body: refused first
    (b"[" * 5_000, 400, "not valid JSON"),  # deeply nested, under max_body
    (b"[]", 422, "body"),
    (b'{"k": 3}', 422, "exactly one"),
    (b'{"history": [1000], "histories": [[1000]]}', 422, "exactly one"),
    (b'{"history": [1000], "extra": 1}', 422, "extra"),
    (b'{"history": 5}', 422, "history"),
    (b'{"history": [1180591620717411303424], "dense": true}', 422, "history.0"),  # 2**70
    (b'{"history": [1.5]}', 422, "history.0"),
    (b'{"history": [true]}', 422, "history.0"),
    (b'{"history": [1000], "k": 0}', 422, "k"),
    (b'{"history": [1000], "k": 31}', 422, "k"),
    (b'{"history": [1000], "k": "3"}', 422, "k"),
    (b'{"history": [1000], "beam": 0}', 422, "beam"),
    (b'{"history": [1000], "exclude_history": 1}', 422, "exclude_history"),
    (b'{"history": [31337]}', 422, "not in the model's catalogue"),
    (b'{"history": [40], "dense": true}', 422, "outside [0, 40)"),
    (b'{"history": [-1], "dense": true}', 422, "outside [0, 40)"),
    (b'{"histories": [[1000], [1000], [1000], [1000], [1000], [1000], [1000], [1000], [1000]]}', 413,
     "9 histories"),
    (json.dumps({"history": [1000] * 51}).encode(), 413, "51 items"),
    (json.dumps({"history": [1000], "exclude": [1] * 101}).encode(), 413, "'exclude' has 101"),
    (json.dumps({"history": [1000], "allow": [1] * 101}).encode(), 413, "'allow' has 101"),
])
@pytest.mark.parametrize("pad", [0, INLINE_BODY + 1])
def test_bad_bodies(client, body, status, needle, pad):
    """Each body as it is (validated from the JSON bytes) and after INLINE_BODY spaces (parsed
    by json.loads in the thread pool, its counts checked first): the same answer."""
    r = client.post("/recommend", content=b" " * pad + body, headers={"content-type": "application/json"})
    assert needle in is_error(r, status)


def test_paths_methods_and_sizes(client):
    assert "/nope" in is_error(client.get("/nope"), 404)
    is_error(client.post("/nope", json={}), 404)
    for method, url in (("PUT", "/recommend"), ("GET", "/recommend"), ("DELETE", "/health"),
                        ("PATCH", "/admin/reload")):
        assert method in is_error(client.request(method, url), 405)
    big = b'{"history": [' + b"1000, " * 5000 + b"1000]}"
    assert "over the limit of 25000" in is_error(client.post("/recommend", content=big), 413)
    chunks = (b"1000, " for _ in range(5000))  # no Content-Length: counted while reading
    streamed = client.post("/recommend", content=chunks, headers={"content-type": "application/json"})
    assert "over the limit" in is_error(streamed, 413)
    assert "Content-Length" in is_error(client.post("/recommend", content=b"{}",
                                                    headers={"content-length": "x2"}), 400)


def test_500_503_504(dirs):
    served = Served(dirs["one"])
    limits = dataclasses.replace(LIMITS, timeout=0.3, max_queue=1)
    with TestClient(create_app(served, limits), raise_server_exceptions=False) as c:
        def boom(*a, **k):
            raise RuntimeError("a bug")

        served.search = boom
        assert "RuntimeError" in is_error(c.post("/recommend", json={"history": [1000]}), 500)

        def slow(*a, **k):
            time.sleep(0.6)
            raise AssertionError("answered after its deadline")

        served.search = slow
        statuses = []
        first = threading.Thread(
            target=lambda: statuses.append(c.post("/recommend", json={"history": [1000]})))
        first.start()
        time.sleep(0.1)
        assert "busy" in is_error(c.post("/recommend", json={"history": [1000]}), 503)
        first.join()
        assert "0.3 s" in is_error(statuses[0], 504)
        del served.search
        assert c.post("/recommend", json={"history": [1000]}).status_code == 200  # the pool is free again


# ---------------------------------------------------------------------------- reload
def test_hot_reload(client, dirs):
    v1 = client.get("/health").json()["model"]["version"]
    before = client.post("/recommend", json={"histories": HISTORIES, "k": 5}).json()
    r = client.post("/admin/reload", json={"model": str(dirs["two"])})
    assert r.status_code == 200 and r.json()["model"]["path"] == str(dirs["two"].resolve())
    health = client.get("/health").json()
    assert health["model"]["version"] not in (v1,) and health["reloads"] == 1
    model, ids, scores = oracle(dirs["two"], HISTORIES, 5)
    after = client.post("/recommend", json={"histories": HISTORIES, "k": 5}).json()
    check_like_oracle(after["results"], model, ids, scores)
    assert after != before
    for target, needle in ((dirs["broken"], "corrupt"), ("/nonexistent/model", "not found"),
                           (dirs["one"] / "config.toml", "")):
        msg = is_error(client.post("/admin/reload", json={"model": str(target)}), 400)
        assert needle in msg and f"still serving {dirs['two'].resolve()}" in msg
    assert client.get("/health").json()["reloads"] == 1
    assert client.post("/recommend", json={"histories": HISTORIES, "k": 5}).json() == after  # old one answers
    is_error(client.post("/admin/reload", content=b"{"), 400)
    is_error(client.post("/admin/reload", json={"model": 3}), 422)
    is_error(client.post("/admin/reload", json={"model": ""}), 422)  # not "the same directory"
    assert "NUL" in is_error(client.post("/admin/reload", json={"model": "a\x00b"}), 400)  # was a 500
    same = client.post("/admin/reload")  # no body: the same directory again
    assert same.status_code == 200 and same.json()["model"]["path"] == str(dirs["two"].resolve())


# ---------------------------------------------------------------------------- the schema
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schema_fuzz_no_5xx(client, mode):
    """schemathesis draws requests from the published /openapi.json (valid ones, then invalid
    ones): never a 5xx, every error is {"error": ...}; bounded to 15 examples per operation."""
    from hypothesis import given
    from schemathesis import GenerationMode

    api = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    calls = []
    for result in api.get_all_operations():
        op = result.ok()
        if mode == "negative" and op.method.upper() == "GET":
            continue  # GET /health takes no input: nothing to break

        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case):
            r = case.call()
            calls.append(r.status_code)
            assert r.status_code < 500, (case.method, case.path, case.body, r.status_code, r.text)
            if r.status_code >= 400:
                assert list(r.json()) == ["error"]

        run()
    assert len(calls) >= 15 and (mode == "negative" or 200 in calls)
    assert client.get("/health").json()["model"]["n_items"] == 40


# ---------------------------------------------------------------------------- the real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_bad_addresses(dirs, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for args, needle in ((["--port", "70000"], "--port must be in [0, 65535]"),
                             (["--host", "no-such-host.invalid"], "cannot resolve"),
                             (["--port", str(port)], "cannot listen on"),
                             (["--max-k", "0"], "--max-k must be positive")):
            assert main(["serve", str(dirs["one"]), *args]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert main(["serve", str(dirs["broken"]), "--port", "0"]) == 2
    assert "corrupt" in capsys.readouterr().err


def http(port, method, path, body=None, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw_post(port, body, split, between):
    """POST /recommend over a raw socket: send ``split`` bytes of the body, call ``between()``,
    send the rest, read the reply to the end (the server closes: keep-alive is off in a shutdown)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n" % len(body) + body[:split])
        between()
        s.sendall(body[split:])
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    return head, payload


def test_graceful_shutdown_in_thread(dirs):
    """uvicorn with our app and protocol in a thread; ``handle_exit`` is what its SIGTERM handler
    calls. A request whose body is still arriving completes; the server then stops; a garbled
    request line gets a JSON 400."""
    import uvicorn

    from deep_retrieval.serve import PROTOCOL, bind

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(Served(dirs["one"]), LIMITS), http=PROTOCOL,
                            log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GARBAGE \x00\x01 nonsense\r\n\r\n")
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400") and b'{"error": "bad HTTP request' in reply
        status, out = http(port, "POST", "/recommend", b"x" * (10 << 20))  # 10 MB: the 413 is read
        assert status == 413 and "over the limit of 25000" in out["error"]

        def stop():
            server.handle_exit(signal.SIGTERM, None)
            time.sleep(0.3)
            assert thread.is_alive()  # waiting for the request in flight

        head, payload = raw_post(port, json.dumps({"history": [1000, 1007], "k": 3}).encode(), 10, stop)
        assert head.startswith(b"HTTP/1.1 200") and len(json.loads(payload)["items"]) == 3
        thread.join(10)
        assert not thread.is_alive()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.slow
def test_server_process_sighup_errors_and_graceful_sigterm(dirs):
    """``dr serve`` in a subprocess: garbled requests, a 10 MB body, SIGHUP, and SIGTERM with a
    request in flight (its body still arriving): the request completes, then the server exits 0."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "deep_retrieval.cli", "serve", str(dirs["one"]),
                             "--port", str(port), "--max-body", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        for _ in range(300):
            try:
                status, health = http(port, "GET", "/health")
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"server did not start: {proc.stderr.read1().decode()}")
        assert status == 200 and health["reloads"] == 0

        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a garbled request line
            s.sendall(b"GARBAGE \x00\x01 nonsense\r\n\r\n")
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400") and b'{"error": "bad HTTP request' in reply

        status, out = http(port, "POST", "/recommend", b"x" * (10 << 20))  # 10 MB: the 413 is read
        assert status == 413 and "over the limit of 100000" in out["error"]

        proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if http(port, "GET", "/health")[1]["reloads"] == 1:
                break
            time.sleep(0.05)
        assert http(port, "GET", "/health")[1]["reloads"] == 1

        def stop():
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None  # still waiting for the request in flight

        head, payload = raw_post(port, json.dumps({"history": [1000, 1007], "k": 3}).encode(), 10, stop)
        assert head.startswith(b"HTTP/1.1 200") and len(json.loads(payload)["items"]) == 3
        assert proc.wait(timeout=20) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_batch_answers_like_each_request_alone(dirs):
    """The Batcher's shared call (mixed k, beam, exclude_history, dense, one or several
    histories) gives every request exactly what it gets on its own."""
    from deep_retrieval.serve import _run_batch, answer, parse, request_model

    cur = Served(dirs["one"])
    Req = request_model(LIMITS)
    bodies = [{"history": HISTORIES[0], "k": 3}, {"history": HISTORIES[1], "k": 7, "exclude_history": True},
              {"histories": HISTORIES[1:], "k": 5, "beam": 7}, {"history": [0, 5], "dense": True, "k": 2},
              {"histories": [[], HISTORIES[2]], "exclude_history": True, "beam": 7}]
    jobs = [parse(cur, Req, LIMITS, json.dumps(b).encode()) for b in bodies]
    assert all(job.batchable for job in jobs)
    together = _run_batch([(cur, job) for job in jobs])
    for job, got in zip(jobs, together, strict=True):
        alone = json.loads(answer(cur, job, time.monotonic() + 10))
        got = json.loads(got)
        for a, b in zip(alone.get("results", [alone]), got.get("results", [got]), strict=True):
            assert a["candidates"] == b["candidates"] and len(a["items"]) == len(b["items"])
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
            if len(set(np.round(a["scores"], 5))) == len(a["scores"]):  # no ties: the same ids
                assert a["items"] == b["items"]
    assert not parse(cur, Req, LIMITS, b'{"history": [1000], "exclude": [1007]}').batchable


def test_concurrent_requests_get_their_own_answers(client):
    """Requests from 8 threads at once (batched together by the server) get what each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [{"history": h, "k": k, "exclude_history": bool(k % 2)}
              for h in HISTORIES for k in (2, 3, 5)] + [{"histories": HISTORIES, "k": 4}]
    alone = [client.post("/recommend", json=b).json() for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: client.post("/recommend", json=b).json(), bodies * 4))
    for i, got in enumerate(together):
        want = alone[i % len(bodies)]
        for a, b in zip(want.get("results", [want]), got.get("results", [got]), strict=True):
            assert a["candidates"] == b["candidates"]
            np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)
