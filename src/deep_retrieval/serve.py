"""A small HTTP server for a trained model (standard library only).

    GET  /health                 -> {"status": "ok", "n_items": V}
    POST /recommend              body {"history": [id, ...], "k": 10,
                                       "exclude_history": false, "dense": false}
                                 or   {"histories": [[...], [...]], "k": 10, ...}
                                 -> {"items": [...], "scores": [...], "candidates": n}
                                 or   {"results": [{"items", "scores", "candidates"}, ...]}

Ids are the data set's original item ids unless ``"dense": true``. A bad request gets
status 400 (404 for an unknown path) and ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from .errors import DRError
from .model import DeepRetrieval

MAX_BODY = 1 << 20  # bytes
MAX_K = 10_000


def _parse(body: bytes) -> dict:
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DRError("request body is not valid JSON") from None
    if not isinstance(req, dict):
        raise DRError("request body must be a JSON object")
    unknown = set(req) - {"history", "histories", "k", "exclude_history", "dense", "beam"}
    if unknown:
        raise DRError(f"unknown field(s) {sorted(unknown)}")
    if ("history" in req) == ("histories" in req):
        raise DRError("give exactly one of 'history' (a list of ids) or 'histories' (a list of lists)")
    k = req.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise DRError(f"'k' must be an integer in [1, {MAX_K}]")
    beam = req.get("beam")
    if beam is not None and (not isinstance(beam, int) or isinstance(beam, bool) or beam < 1):
        raise DRError("'beam' must be a positive integer")
    for flag in ("exclude_history", "dense"):
        if not isinstance(req.get(flag, False), bool):
            raise DRError(f"'{flag}' must be true or false")
    hists = [req["history"]] if "history" in req else req["histories"]
    if not isinstance(hists, list) or not all(isinstance(h, list) for h in hists):
        raise DRError("histories must be lists of item ids")
    return req | {"k": k, "histories_": hists}


def recommend_json(model: DeepRetrieval, req: dict) -> dict:
    """Answer one parsed request (shared by the server and its tests)."""
    dense = req.get("dense", False)
    hists = []
    for h in req["histories_"]:
        if dense:
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in h):
                raise DRError("with dense=true, ids must be integers")
            hists.append(np.asarray(h, dtype=np.int64))
        else:
            hists.append(model.dense_ids(h))
    ids, scores = model.recommend(hists, req["k"], req.get("exclude_history", False), B=req.get("beam"))
    results = []
    for r in range(len(hists)):
        keep = ids[r] >= 0
        out = ids[r][keep] if dense else model.item_ids[ids[r][keep]]
        results.append({
            "items": out.tolist(),
            "scores": [float(s) for s in scores[r][keep]],
            "candidates": int(model.last_items_scored[r]),
        })
    return results[0] if "history" in req else {"results": results}


def make_server(model: DeepRetrieval, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    lock = threading.Lock()  # one inference at a time; torch uses the cores itself

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, obj: dict) -> None:
            body = (json.dumps(obj) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok", "n_items": model.n_items})
            else:
                self._send(404, {"error": f"no such path {self.path}; use GET /health or POST /recommend"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/recommend":
                self._send(404, {"error": f"no such path {self.path}; use POST /recommend"})
                return
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if not 0 < n <= MAX_BODY:
                self._send(400, {"error": f"Content-Length must be in [1, {MAX_BODY}]"})
                return
            try:
                req = _parse(self.rfile.read(n))
                with lock:
                    out = recommend_json(model, req)
            except DRError as e:
                self._send(400, {"error": str(e)})
                return
            self._send(200, out)

        def log_message(self, fmt, *args) -> None:  # quiet by default
            pass

    return ThreadingHTTPServer((host, port), Handler)
