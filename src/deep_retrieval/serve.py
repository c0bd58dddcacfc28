"""The HTTP service for a trained model: FastAPI + uvicorn (``pip install 'deep-retrieval[serve]'``).

    GET  /health          {"status": "ok", "model": {path, version, format_version, n_items,
                           loaded_at, K, D, B, blend}, "reloads": n, "in_flight": n}
    POST /recommend       {"history": [id, ...]} or {"histories": [[...], ...]}, optional "k"
                          (10), "beam" (the model's B), "exclude_history", "dense", "exclude"
                          [ids], "allow" [ids] -> {"items", "scores", "candidates"} or
                          {"results": [{"items", "scores", "candidates"}, ...]}
    POST /admin/reload    {"model": DIR} or no body (the same directory again) -> {"status":
                          "reloaded", "model": {...}}; SIGHUP does the same for the same directory
    GET  /openapi.json    the schema; /docs renders it

Inference is ``DeepRetrieval.retrieve``, the path ``recommend`` takes on the CPU: the model's
torch encoder, then ``fast.Retriever`` (numpy beam search + candidates + rerank; a model with a
blend, ``DeepRetrieval.blend``, adds the blend's term to the reranker's scores), in a thread
pool (``Limits.threads``): no global lock, both release the GIL in their large operations.
Small requests without item filters are batched (``Batcher``): while one batch runs, the
next queues, and goes as one encoder + Retriever call. Large requests
and filtered ones run on their own, CHUNK users at a time, checking their deadline between
chunks. Ids are the data set's original item ids (strictly typed: a model
with integer ids refuses strings and the reverse) unless ``"dense": true``; unknown ids in
``exclude`` / ``allow`` are ignored, unknown ids in a history are an error.

Every error is JSON ``{"error": "<one line>"}``: 400 a body that is not JSON (or nested too
deeply) or a garbled HTTP request, 404 no such path, 405 wrong method, 413 the body or a cap
(histories per request, history length, ids in a filter) exceeded, 422 a value of the wrong
type or range (or an unknown id), 500 a bug, 503 more than ``max_queue`` requests waiting,
504 the request ran past ``timeout`` seconds. A body over ``max_body`` is refused from its
Content-Length before any of it is stored (or as soon as the count passes it); the rest is
read and thrown away, bounded, so that the client gets the 413 instead of a broken pipe.

A reload loads and checks the new directory in a thread while the old model keeps serving,
then swaps one reference; a directory that fails to load is refused (400) and changes
nothing. SIGTERM is uvicorn's graceful shutdown: no new connections, in-flight requests
finish (up to ``graceful`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Annotated

import numpy as np

from .errors import DRError

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _e:  # pragma: no cover - the extra is missing
    raise DRError(f"dr serve needs the serve extra: pip install 'deep-retrieval[serve]' ({_e})") from None

CHUNK = 32  # users encoded and searched together; the deadline is checked between chunks
INLINE_BODY = 16 << 10  # bytes: a body up to this size is parsed on the event loop
# batches in the pool at once: on 2 cores 2 gave 1.8x the req/s of 1 at 32 clients, 4 no more
# (benchmarks/bench_serve.py); the encoder and the large numpy operations release the GIL
BATCHES_AT_ONCE = 2
DRAIN_LIMIT = 64 << 20  # bytes of an oversized body read and discarded so that the 413 arrives


@dataclass(frozen=True)
class Limits:
    """Caps and knobs of the service (``dr serve`` options)."""

    max_histories: int = 256  # histories in one request (413 above)
    max_history_len: int = 1000  # ids in one history (413 above); the encoder reads the last max_seq_len
    max_k: int = 1000  # 422 above
    max_beam: int = 1000  # 422 above
    max_filter: int = 100_000  # ids in "exclude" or "allow" (413 above)
    max_body: int = 1 << 20  # bytes (413 above)
    timeout: float = 10.0  # seconds per request (504 after)
    threads: int = 4  # inference threads
    max_queue: int = 256  # requests in flight before 503
    graceful: int = 30  # seconds SIGTERM waits for in-flight requests

    def validate(self) -> Limits:
        for name, value in asdict(self).items():
            if not value > 0:
                raise DRError(f"--{name.replace('_', '-')} must be positive, got {value}")
        return self


class HTTPError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Expired(Exception):
    """The request's deadline passed (its 504 has been sent already)."""


# ---------------------------------------------------------------------------- the loaded model
def _fingerprint(path: Path) -> str:
    """12 hex digits naming this model's files (contents of the small ones, size + mtime of the weights)."""
    h = hashlib.sha256()
    for name in ("meta.json", "config.toml"):
        h.update((path / name).read_bytes())
    st = (path / "model.safetensors").stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


class Served:
    """A loaded model ready to answer: the torch encoder, the numpy Retriever, the id maps."""

    def __init__(self, path: str | os.PathLike):
        from .model import DeepRetrieval

        if "\x00" in str(path):  # resolve() would raise ValueError: a 500 instead of a 400
            raise DRError(f"model path {str(path)!r} contains a NUL character")
        self.path = Path(path).resolve()
        try:
            model = DeepRetrieval.load(self.path)
            self.version = _fingerprint(self.path)
            model.retriever()  # the numpy serving arrays, built now: a broken model fails here
        except DRError:
            raise
        except Exception as e:  # a broken directory must be refused, whatever broke
            raise DRError(f"model {path}: cannot be loaded ({type(e).__name__}: {e})") from None
        self.model = model
        self.n_items = model.n_items
        self.B = model.config.beam.B
        ids = np.asarray(model.item_ids)
        self.item_ids = ids
        self.int_ids = ids.dtype.kind in "iu"
        self.order = np.argsort(ids, kind="stable")  # (V,) dense index of each sorted id
        self.sorted_ids = ids[self.order]  # (V,)
        self.meta = {
            "path": str(self.path), "version": self.version,
            "format_version": int(json.loads((self.path / "meta.json").read_text()).get("format_version", 0)),
            "n_items": int(self.n_items), "K": model.config.structure.K, "D": model.config.structure.D,
            "B": self.B, "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "blend": None if model.blend_scorer is None else
            {x: model.blend[x] for x in ("scorer", "w", "eps")},
        }
        ids, _, _ = self.search([np.zeros(0, np.int64)], 1, self.B)  # a smoke test of every array
        if not (ids.shape == (1, 1) and -1 <= ids[0, 0] < self.n_items):
            raise DRError(f"model {path}: a test query returned {ids.tolist()}")

    # ids ------------------------------------------------------------------------------
    def dense(self, values: list, what: str, known_only: bool) -> np.ndarray:
        """Original ids (a list) -> dense indices (m,); unknown ids raise 422 or are dropped."""
        if not values:
            return np.zeros(0, dtype=np.int64)
        arr = np.asarray(values)
        if self.int_ids and arr.dtype.kind not in "iu":
            bad = next(x for x in values if not isinstance(x, int))
            raise HTTPError(422, f"{what}: this model's item ids are integers, got {bad!r}")
        if not self.int_ids and arr.dtype.kind != "U":
            bad = next(x for x in values if not isinstance(x, str))
            raise HTTPError(422, f"{what}: this model's item ids are strings, got {bad!r}")
        if self.int_ids and self.sorted_ids.dtype != np.int64:
            arr = arr.astype(np.int64)
            sorted_ids = self.sorted_ids.astype(np.int64)
        else:
            sorted_ids = self.sorted_ids
        pos = np.minimum(np.searchsorted(sorted_ids, arr), len(sorted_ids) - 1)  # (m,)
        found = sorted_ids[pos] == arr
        if known_only:
            return self.order[pos[found]]
        if not found.all():
            bad = values[int(np.argmin(found))]
            raise HTTPError(422, f"{what}: item id {bad!r} is not in the model's catalogue")
        return self.order[pos]

    def check_dense(self, arr: np.ndarray, what: str) -> np.ndarray:
        if arr.dtype.kind not in "iu" and len(arr):
            raise HTTPError(422, f"{what}: with dense=true, ids must be integers")
        arr = arr.astype(np.int64)
        if len(arr) and (arr.min() < 0 or arr.max() >= self.n_items):
            bad = arr[(arr < 0) | (arr >= self.n_items)][0]
            raise HTTPError(422, f"{what}: dense item index {bad} is outside [0, {self.n_items})")
        return arr

    # inference ------------------------------------------------------------------------
    def search(self, hists: list[np.ndarray], k: int, B: int, exclude_history=False,
               exclude=None, allow=None, deadline: float | None = None, blend: bool = True):
        """Dense histories -> ids (n, k), scores (n, k), candidates (n,), CHUNK users at a time.

        ``exclude_history``: one bool for every user or a list of one per user. ``blend``:
        False leaves a model's blend out (the reranker alone; benchmarks/bench_serve_blend.py).
        """
        from .data.dataset import Ragged

        n = len(hists)
        per_user = [exclude_history] * n if isinstance(exclude_history, bool) else list(exclude_history)
        empty = np.zeros(0, dtype=np.int64)
        parts = []
        for lo in range(0, n, CHUNK):
            if deadline is not None and time.monotonic() > deadline:
                raise _Expired
            rows = Ragged.from_lists(hists[lo : lo + CHUNK])
            mine = per_user[lo : lo + CHUNK]
            drop = None if not any(mine) else rows if all(mine) else Ragged.from_lists(
                [x if d else empty for x, d in zip(hists[lo : lo + CHUNK], mine, strict=True)])
            parts.append(self.model.retrieve(rows, k, B, drop=drop, exclude=exclude, allow=allow,
                                             blend=blend))
        return tuple(np.concatenate(x) for x in zip(*parts, strict=True))


# ---------------------------------------------------------------------------- schemas
Int64 = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
Str = Annotated[str, Field(strict=True, max_length=1000)]
ItemId = Int64 | Str


class ErrorBody(BaseModel):
    error: str = Field(description="one line naming the problem")


class Result(BaseModel):
    items: list[ItemId] = Field(description="best first; original ids unless dense")
    scores: list[float] = Field(description="the reranker's inner products (plus the blend's term "
                                "when the model has one: /health's model.blend)")
    candidates: int = Field(description="distinct items reranked (after the filters)")


class Results(BaseModel):
    results: list[Result]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str | None = Field(None, min_length=1,
                              description="a model directory; absent = the one served now")


def request_model(limits: Limits) -> type[BaseModel]:
    """The /recommend body, with the caps of ``limits`` in its descriptions and bounds."""

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        history: list[ItemId] | None = Field(
            None, description=f"one user's items, oldest first (at most {limits.max_history_len})")
        histories: list[list[ItemId]] | None = Field(
            None, description=f"several users' histories (at most {limits.max_histories})")
        k: int = Field(10, ge=1, le=limits.max_k, description="items per user")
        beam: int | None = Field(None, ge=1, le=limits.max_beam, description="B; the model's by default")
        exclude_history: bool = Field(False, description="never return an item of the user's history")
        dense: bool = Field(False, description="ids in and out are dense indices [0, n_items)")
        exclude: list[ItemId] = Field([], description=f"items nobody gets (at most {limits.max_filter})")
        allow: list[ItemId] | None = Field(
            None, description=f"the only items anybody gets (at most {limits.max_filter})")

    return RecommendRequest


def _validation_message(e: ValidationError) -> tuple[int, str]:
    errs = e.errors(include_url=False)
    if errs and errs[0]["type"] in ("json_invalid", "recursion_loop"):
        return 400, f"request body is not valid JSON: {errs[0]['msg']}"
    first = errs[0]
    # drop the union-branch tags pydantic adds ("constrained-int", "list[...]"): a plain path remains
    loc = ".".join(str(x) for x in first["loc"] if not (isinstance(x, str) and ("-" in x or "[" in x)))
    loc = loc or "body"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return 422, f"{loc}: {first['msg']}{more}".replace("\n", " ")


# ---------------------------------------------------------------------------- the app
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 (from Content-Length before reading, or once the count passes)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            await _drain(request)
            raise HTTPError(413, f"body of {int(declared)} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request, size)
            raise HTTPError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request, seen: int = 0) -> None:
    """Read and discard the rest of the body (up to DRAIN_LIMIT) so the client reads our answer."""
    with contextlib.suppress(Exception):
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break


def create_app(served: Served, limits: Limits | None = None, freeze_heap: bool = False) -> FastAPI:
    """The ASGI app serving ``served``; ``app.state.current`` is swapped by a reload.

    ``freeze_heap`` (``run`` sets it): ``_freeze_heap`` at startup and after each reload.
    """
    limits = (limits or Limits()).validate()
    Req = request_model(limits)
    pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="dr-infer")
    batcher = Batcher(pool, min(BATCHES_AT_ONCE, limits.threads))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        if freeze_heap:
            _freeze_heap()
        hup = False
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_sighup(app)))
            hup = True
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        pool.shutdown(wait=True)

    app = FastAPI(title="deep-retrieval", version="1", lifespan=lifespan,
                  description="Deep Retrieval recommendations: beam search over the learnt paths, "
                              "then the reranker. Every error is {\"error\": \"<one line>\"}.")
    app.state.current = served
    app.state.reloads = 0
    app.state.in_flight = 0
    app.state.limits = limits
    app.state.reload_lock = asyncio.Lock()  # one reload at a time
    app.state.freeze_heap = freeze_heap

    # errors ---------------------------------------------------------------------------
    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error(404, f"no such path {request.url.path}; see /openapi.json")
        if exc.status_code == 405:
            return _error(405, f"method {request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return _error(422, f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    errors = {s: {"model": ErrorBody} for s in (400, 404, 405, 413, 422, 500, 503, 504)}

    # endpoints ------------------------------------------------------------------------
    @app.get("/health", responses=errors)
    async def health() -> dict:
        """Liveness and the model being served (query strings are ignored)."""
        cur: Served = app.state.current
        return {"status": "ok", "model": cur.meta, "reloads": app.state.reloads,
                "in_flight": app.state.in_flight}

    @app.post("/recommend", responses={200: {"model": Result | Results}, **errors},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": Req.model_json_schema()}}}})
    async def recommend(request: Request) -> Response:
        """Top-k items of one history (``history``) or several (``histories``)."""
        if app.state.in_flight >= limits.max_queue:
            raise HTTPError(503, f"server busy: {app.state.in_flight} requests in flight")
        app.state.in_flight += 1
        try:
            body = await _read_body(request, limits.max_body)
            cur: Served = app.state.current  # one model for the whole request, even across a reload
            deadline = time.monotonic() + limits.timeout
            try:
                if len(body) <= INLINE_BODY:  # a small body is checked here: no thread hop
                    job = parse(cur, Req, limits, body)
                else:
                    job = await asyncio.wait_for(
                        asyncio.wrap_future(pool.submit(parse, cur, Req, limits, body)), limits.timeout)
                if job.batchable:
                    fut = batcher.submit(cur, job)
                else:
                    fut = asyncio.wrap_future(pool.submit(answer, cur, job, deadline))
                out = await asyncio.wait_for(fut, max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise HTTPError(504, f"request took longer than {limits.timeout:g} s") from None
            return Response(out, media_type="application/json", headers={"x-model-version": cur.version})
        finally:
            app.state.in_flight -= 1

    @app.post("/admin/reload", responses={200: {"description": "the new model"}, **errors},
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/json": {"schema": ReloadRequest.model_json_schema()}}}})
    async def reload(request: Request) -> dict:
        """Load a model directory (or the same one again), check it, swap it in atomically."""
        body = await _read_body(request, 1 << 16)
        target = None
        if body.strip():
            try:
                target = ReloadRequest.model_validate_json(body).model
            except ValidationError as e:
                raise HTTPError(*_validation_message(e)) from None
        return {"status": "reloaded", "model": await _reload(app, target)}

    return app


async def _reload(app: FastAPI, target: str | None) -> dict:
    """Load ``target`` (None: the current directory) in a thread and swap it in; 400 if broken."""
    async with app.state.reload_lock:
        path = str(app.state.current.path) if target is None else target
        try:
            new = await asyncio.to_thread(Served, path)
        except DRError as e:
            raise HTTPError(400, f"reload refused, still serving {app.state.current.path}: {e}") from None
        app.state.current = new  # one reference: a request sees the old model or the new one
        app.state.reloads += 1
        if app.state.freeze_heap:
            _freeze_heap()
        return new.meta


def _freeze_heap() -> None:
    """Move every object alive now (torch, numpy, the model) out of the cyclic GC's sight.

    Otherwise each full collection walks them all: parsing a body of 150,000 small lists
    triggers dozens and took 0.58 s instead of 0.05 s. Unfrozen and collected first, so that
    a reload's old model is not kept forever.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _sighup(app: FastAPI) -> None:
    try:
        meta = await _reload(app, None)
        print(f"SIGHUP: reloaded {meta['path']} (version {meta['version']})", file=sys.stderr)
    except HTTPError as e:
        print(f"SIGHUP: {e.message}", file=sys.stderr)


@dataclass
class Job:
    """One checked /recommend request, in dense ids."""

    hists: list[np.ndarray]  # n x (len,) int64
    k: int
    B: int
    exclude_history: bool
    exclude: np.ndarray | None  # (m,) int64
    allow: np.ndarray | None  # (m,) int64
    dense: bool  # answer in dense indices
    single: bool  # "history" (one result) rather than "histories"

    @property
    def batchable(self) -> bool:
        """Small and without item filters: may share an encoder + Retriever call with others."""
        return len(self.hists) <= CHUNK and self.exclude is None and self.allow is None


def _check_counts(obj, limits: Limits) -> None:
    """413 for a parsed body over the caps, before the (slower) validation of its every id."""
    if not isinstance(obj, dict):
        return
    hists = obj.get("histories")
    if isinstance(hists, list) and len(hists) > limits.max_histories:
        raise HTTPError(413, f"{len(hists)} histories in one request; the limit is {limits.max_histories}")
    rows = (hists if isinstance(hists, list) else []) + [obj.get("history")]
    longest = max((len(h) for h in rows if isinstance(h, list)), default=0)
    if longest > limits.max_history_len:
        raise HTTPError(413, f"a history of {longest} items; the limit is {limits.max_history_len}")
    for name in ("exclude", "allow"):
        got = obj.get(name)
        if isinstance(got, list) and len(got) > limits.max_filter:
            raise HTTPError(413, f"'{name}' has {len(got)} ids; the limit is {limits.max_filter}")


def parse(cur: Served, Req, limits: Limits, body: bytes) -> Job:
    """Validate one /recommend body, apply the caps, map ids; every problem is an HTTPError.

    A large body is parsed by ``json.loads`` and its counts checked first: a request of
    150,000 histories is refused in tens of ms, not after validating every id (which
    holds the GIL, and so the event loop, for most of a second).
    """
    try:
        if len(body) <= INLINE_BODY:
            req = Req.model_validate_json(body)
        else:
            try:
                obj = json.loads(body)
            except RecursionError:
                raise HTTPError(400, "request body is not valid JSON: nested too deeply") from None
            except ValueError as e:
                raise HTTPError(400, f"request body is not valid JSON: {e}") from None
            _check_counts(obj, limits)
            req = Req.model_validate(obj)
    except ValidationError as e:
        raise HTTPError(*_validation_message(e)) from None
    if (req.history is None) == (req.histories is None):
        raise HTTPError(422, "give exactly one of 'history' (a list of ids) or 'histories' (a list of lists)")
    hists = [req.history] if req.history is not None else req.histories
    _check_counts({"histories": req.histories, "history": req.history, "exclude": req.exclude,
                   "allow": req.allow}, limits)

    lengths = np.fromiter((len(h) for h in hists), dtype=np.int64, count=len(hists))
    flat = list(chain.from_iterable(hists))
    if req.dense:
        flat_dense = cur.check_dense(np.asarray(flat), "history")
        exclude = cur.check_dense(np.asarray(req.exclude), "exclude")
        allow = None if req.allow is None else cur.check_dense(np.asarray(req.allow), "allow")
    else:
        flat_dense = cur.dense(flat, "history", known_only=False)
        exclude = cur.dense(req.exclude, "exclude", known_only=True)
        allow = None if req.allow is None else cur.dense(req.allow, "allow", known_only=True)
    return Job(np.split(flat_dense, np.cumsum(lengths)[:-1]), req.k, req.beam or cur.B, req.exclude_history,
               exclude if len(exclude) else None, allow, req.dense, req.history is not None)


def respond(cur: Served, job: Job, ids: np.ndarray, scores: np.ndarray, cand: np.ndarray) -> bytes:
    """The JSON answer of ``job`` from its rows of ids (n, >= k), scores, candidates (n,)."""
    results = []
    for r in range(len(job.hists)):
        row = ids[r, : job.k]
        keep = row >= 0
        out = row[keep] if job.dense else cur.item_ids[row[keep]]
        results.append({"items": out.tolist(), "scores": scores[r, : job.k][keep].tolist(),
                        "candidates": int(cand[r])})
    return json.dumps(results[0] if job.single else {"results": results}, separators=(",", ":")).encode()


def answer(cur: Served, job: Job, deadline: float) -> bytes:
    """One job on its own (large, or with filters), in the inference pool."""
    try:
        ids, scores, cand = cur.search(job.hists, job.k, job.B, job.exclude_history, job.exclude,
                                       job.allow, deadline)
    except _Expired:
        return b""  # nobody is waiting any more: the 504 went out at the deadline
    return respond(cur, job, ids, scores, cand)


class Batcher:
    """Natural batching of small requests: while ``max_running`` batches run in the pool, new
    requests queue; when one ends, what is queued (up to CHUNK users) goes as the next batch,
    one encoder call and one Retriever call per model and beam size. An idle server runs a
    request at once (no waiting for company); a busy one amortises the per-call costs over
    many. Its state is touched only on the event loop."""

    def __init__(self, pool: ThreadPoolExecutor, max_running: int = 1):
        self.pool = pool
        self.pending: list[tuple[Served, Job, asyncio.Future]] = []
        self.running = 0  # batches in the pool now
        self.max_running = max_running

    def submit(self, cur: Served, job: Job) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((cur, job, fut))
        if self.running < self.max_running:
            self._start()
        return fut

    def _start(self) -> None:
        batch, users = [], 0
        while self.pending and users + len(self.pending[0][1].hists) <= CHUNK:
            item = self.pending.pop(0)
            if not item[2].done():  # timed out while queued: skip it
                batch.append(item)
                users += len(item[1].hists)
        if not batch:  # every queued request timed out (a batchable job always fits alone)
            return
        self.running += 1
        loop = asyncio.get_running_loop()
        done = self.pool.submit(_run_batch, [(cur, job) for cur, job, _ in batch])
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, batch, f))

    def _finish(self, batch, f) -> None:
        try:
            outs = f.result()
        except Exception as e:  # a bug: every request of the batch gets its 500
            outs = [e] * len(batch)
        for (_, _, fut), out in zip(batch, outs, strict=True):
            if not fut.done():
                if isinstance(out, Exception):
                    fut.set_exception(out)
                else:
                    fut.set_result(out)
        self.running -= 1
        if self.pending:
            self._start()


def _run_batch(batch: list[tuple[Served, Job]]) -> list[bytes]:
    """Answer a batch of small jobs: one search per (model, beam size), each job its own rows."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (cur, job) in enumerate(batch):
        groups.setdefault((id(cur), job.B), []).append(i)
    out: list[bytes] = [b""] * len(batch)
    for members in groups.values():
        cur, B = batch[members[0]][0], batch[members[0]][1].B
        jobs = [batch[i][1] for i in members]
        hists = [h for job in jobs for h in job.hists]
        flags = [job.exclude_history for job in jobs for _ in job.hists]
        ids, scores, cand = cur.search(hists, max(job.k for job in jobs), B, flags)
        lo = 0
        for i, job in zip(members, jobs, strict=True):
            hi = lo + len(job.hists)
            out[i] = respond(cur, job, ids[lo:hi], scores[lo:hi], cand[lo:hi])
            lo = hi
    return out


# ---------------------------------------------------------------------------- running it
try:  # uvicorn's fast parser when present
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
except ImportError:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Protocol


class JSON400Protocol(_Protocol):
    """uvicorn's HTTP protocol with a JSON body on its own 400 (a garbled request line or header)."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": f"bad HTTP request: {' '.join(msg.split())}"}).encode()
        head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body))
        self.transport.write(head + body)
        self.transport.close()


PROTOCOL = "deep_retrieval.serve:JSON400Protocol"  # by name: worker processes import it


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line DRError (bad port, unknown host, port in use)."""
    if not 0 <= port <= 65535:
        raise DRError(f"--port must be in [0, 65535], got {port}")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise DRError(f"--host {host!r}: cannot resolve it ({e})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise DRError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def run(model_dir, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
        workers: int = 1, log=print) -> None:
    """``dr serve``: bind first (errors before the model loads), load, serve until SIGTERM/SIGINT."""
    import torch

    limits = (limits or Limits()).validate()
    if workers < 1:
        raise DRError(f"--workers must be >= 1, got {workers}")
    sock = bind(host, port)
    try:
        torch.set_num_threads(1)  # one core per request; the thread pool gives the parallelism
        served = Served(model_dir)  # a broken model is an error: line before serving anything
        bound = sock.getsockname()[1]
        log(f"serving {served.path} (version {served.version}, {served.n_items} items) on "
            f"http://{host}:{bound} with {workers} worker(s); SIGHUP or POST /admin/reload reloads")
        # uvicorn re-raises the signal that stopped it once the requests in flight are done;
        # a graceful stop is a normal end, so SIGTERM then exits with status 0
        signal.signal(signal.SIGTERM, _exit_zero)
        if workers == 1:
            config = uvicorn.Config(create_app(served, limits, freeze_heap=True), http=PROTOCOL,
                                    log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=limits.graceful)
            uvicorn.Server(config).run(sockets=[sock])
            return
        del served
        from uvicorn.supervisors import Multiprocess

        os.environ["DR_SERVE"] = json.dumps({"model": str(Path(model_dir).resolve()), **asdict(limits)})
        config = uvicorn.Config("deep_retrieval.serve:app_from_env", factory=True, workers=workers,
                                http=PROTOCOL, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=limits.graceful)
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


def _exit_zero(signum, frame) -> None:
    raise SystemExit(0)


def app_from_env() -> FastAPI:
    """The app of one worker process of ``run(workers > 1)`` (settings in $DR_SERVE)."""
    import torch

    torch.set_num_threads(1)
    cfg = json.loads(os.environ["DR_SERVE"])
    model = cfg.pop("model")
    return create_app(Served(model), Limits(**cfg), freeze_heap=True)
