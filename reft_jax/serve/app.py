"""The HTTP service (Starlette): the teacher's filter behind OpenAI's moderation endpoint, a file endpoint, health
and metrics.

    GET  /healthz          200 once the filter is loaded and every bucket compiled, 503 while loading (no key needed)
    POST /v1/moderations   {"input": "text" | ["text", ...]} -> OpenAI's moderation response
    POST /v1/filter        a file in any layout `--data` reads -> one {"index", "score", "flagged", "digest"} line per row
    GET  /metrics          Prometheus text

Every error is JSON in OpenAI's shape, {"error": {"message": ONE LINE, "type", "code"}}. Prompts are never logged
unless the server was started with --log-prompts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from reft_jax.errors import ReftError
from reft_jax.serve.batcher import Batcher
from reft_jax.serve.metrics import Metrics
from reft_jax.serve.settings import Settings
from reft_jax.serve.teacher_filter import TeacherFilter, shortest_first
from reft_jax.stages.common import row_digest

log = logging.getLogger("reft_jax.serve")

MODEL = "reft-jax-filter"  # the "model" of a moderation response
# The layouts of /v1/filter (those `--data` reads): ?format=NAME, or the body's Content-Type.
FORMATS = {"application/jsonl": "jsonl", "application/x-ndjson": "jsonl", "application/json": "json",
           "text/csv": "csv", "text/tab-separated-values": "tsv", "application/vnd.apache.parquet": "parquet",
           "application/x-parquet": "parquet"}
FILE_CHUNK_BATCHES = 8  # /v1/filter queues this many batches of a file at a time: other requests get turns


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def error_response(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "server_error" if status >= 500 else "invalid_request_error"
    message = " ".join(message.split())  # one line, whatever the cause printed
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status,
                        headers=headers)


class Service:
    """The server's state: loading, then the filter and its batcher; the settings and metrics."""

    def __init__(self, load: Callable[[], TeacherFilter], settings: Settings, batch_size: int,
                 on_failure: Callable[[str], None]):
        self.load, self.settings, self.on_failure = load, settings, on_failure
        self.filter: TeacherFilter | None = None
        self.batcher: Batcher | None = None
        self.metrics = Metrics(batch_size)
        self._expected = hashlib.sha256(f"Bearer {settings.api_key}".encode()).digest()

    def start(self) -> None:
        """Loads the filter and compiles every bucket, then serves (in a thread: /healthz answers 503 meanwhile)."""
        try:
            filt = self.load()
            filt.warm()
        except ReftError as e:
            self.on_failure(str(e))
            return
        except Exception as e:  # noqa: BLE001 (the server must not stay up, unready, forever)
            log.exception("loading the filter failed")
            self.on_failure(f"{type(e).__name__}: {e}")
            return
        self.metrics.compiled.set_function(filt.compiled)
        self.batcher = Batcher(filt, self.settings.max_wait, on_batch=self.metrics.batch_rows.observe)
        self.filter = filt
        self.metrics.ready.set(1)
        log.info("ready: %d programs compiled (buckets %s, batches of %s rows), tau %.4g (%s, %s direction)",
                 filt.compiled(), list(filt.buckets), list(filt.row_sizes), filt.tau, filt.scorer, filt.direction)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()

    # -- the checks every request goes through ---------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if not self.settings.api_key:
            return
        given = hashlib.sha256(request.headers.get("authorization", "").encode()).digest()
        if not hmac.compare_digest(given, self._expected):  # constant time, and equal lengths by the hash
            raise RequestError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                               "invalid_api_key")

    async def body(self, request: Request, limit: int, option: str) -> bytes:
        """The request's body, 413 as soon as it passes `limit` bytes."""
        too_large = RequestError(413, f"body: more than the limit of {limit} bytes ({option})", "body_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def check_length(self, text: str, where: str) -> None:
        if len(text) > self.settings.max_chars:
            raise RequestError(413, f"{where}: {len(text)} characters, more than the limit of {self.settings.max_chars} "
                               "per input (--max-chars)", "input_too_long")

    def endpoint(self, name: str, handler, *, ready: bool = True, auth: bool = True):
        """handler(request) -> Response, behind the API key (auth) and the filter's readiness (ready: the scoring
        endpoints), counted and timed; a RequestError is its JSON error, anything else a 500 whose cause is logged."""

        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            in_flight = self.metrics.in_flight if ready else None  # the scoring requests
            if in_flight is not None:
                in_flight.inc()
            try:
                if auth:
                    self.authorize(request)
                if ready and self.filter is None:
                    raise RequestError(503, "the filter is loading; retry when /healthz answers 200", "loading")
                response = await handler(request)
            except RequestError as e:
                headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                response = error_response(e.status, e.message, e.code, headers)
            except Exception as e:  # noqa: BLE001
                log.exception("%s: internal error", name)
                response = error_response(500, f"internal error: {type(e).__name__}", "internal_error")
            finally:
                if in_flight is not None:
                    in_flight.dec()
            self.metrics.requests.labels(name, str(response.status_code)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
            return response

        return wrapped

    def counted(self, name: str, scores: np.ndarray, start: float, texts=None) -> None:
        """Metrics and the log line of a scored request (its prompts only with --log-prompts)."""
        flagged = int((scores > self.filter.tau).sum())
        self.metrics.prompts.labels(name).inc(len(scores))
        self.metrics.flagged.labels(name).inc(flagged)
        log.info("%s: %d prompt(s), %d flagged, %.1f ms", name, len(scores), flagged, 1e3 * (time.perf_counter() - start))
        if self.settings.log_prompts and texts is not None:
            for text, s in zip(texts, scores):
                log.info("%s: score %.4f %s", name, s, json.dumps(text))

    # -- endpoints ---------------------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        if self.filter is None:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ready", "tau": self.filter.tau, "buckets": list(self.filter.buckets),
                             "batch_size": self.filter.batch_size, "row_sizes": list(self.filter.row_sizes)})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def moderations(self, request: Request) -> Response:
        start = time.perf_counter()
        texts = self._inputs(_json(await self.body(request, self.settings.max_body_bytes, "--max-body-bytes")))
        ds = await run_in_threadpool(self.filter.tokenize, self.filter.examples(texts))
        scores = await self.batcher.score(ds.prompt_ids)
        self.counted("moderations", scores, start, texts)
        tau = self.filter.tau
        results = [{"flagged": bool(s > tau), "categories": {"harmful": bool(s > tau)},
                    "category_scores": {"harmful": float(s)}} for s in scores]
        return JSONResponse({"id": f"modr-{uuid.uuid4().hex}", "model": MODEL, "results": results})

    def _inputs(self, payload) -> list[str]:
        """The texts of a moderation request: {"input": "text" | ["text", ...]} within the limits."""
        if not isinstance(payload, dict) or "input" not in payload:
            raise RequestError(400, "body: expected a JSON object with an 'input' field")
        texts = payload["input"]
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RequestError(400, "input: expected a string or a list of strings")
        if not texts:
            raise RequestError(400, "input: an empty list")
        if len(texts) > self.settings.max_inputs:
            raise RequestError(400, f"input: {len(texts)} inputs, more than the limit of {self.settings.max_inputs} "
                               "per request (--max-inputs)", "too_many_inputs")
        for i, text in enumerate(texts):
            self.check_length(text, f"input[{i}]")
        return texts

    async def filter_file(self, request: Request) -> Response:
        start = time.perf_counter()
        kind = request.query_params.get("format") or FORMATS.get(
            request.headers.get("content-type", "").split(";")[0].strip().lower())
        if kind not in set(FORMATS.values()):
            raise RequestError(400, "format: name the file's layout with ?format=jsonl|json|csv|tsv|parquet (or its "
                               "Content-Type)")
        body = await self.body(request, self.settings.max_file_bytes, "--max-file-bytes")
        examples = await run_in_threadpool(self._read, body, kind)
        for i, ex in enumerate(examples):
            self.check_length(ex["request"], f"row {i}")
        ds = await run_in_threadpool(self.filter.tokenize, examples)
        digests = [row_digest(ex) for ex in examples]
        return StreamingResponse(self._lines(ds, digests, start), media_type="application/jsonl")

    def _read(self, body: bytes, kind: str) -> list[dict]:
        """The file's rows as `--data` reads them, from a temporary copy; errors name the upload, not the copy."""
        with tempfile.TemporaryDirectory(prefix="reft_jax_upload_") as folder:
            path = Path(folder) / f"upload.{kind}"
            path.write_bytes(body)
            try:
                return self.filter.read_file(path)
            except ReftError as e:
                raise RequestError(400, str(e).replace(str(path), "upload")) from None

    async def _lines(self, ds, digests: list[str], start: float):
        """Scores chunk by chunk: the first lines leave while the rest of a large file is scored. Each line as
        `reft-jax filter`'s scores.jsonl writes it, with the row's digest (what `finetune --kept` matches rows by)."""
        chunk = FILE_CHUNK_BATCHES * self.filter.batch_size
        tau, done = self.filter.tau, []
        for lo in range(0, len(ds), chunk):
            part = ds.prompt_ids[lo: lo + chunk]
            order, scores = shortest_first(part), np.zeros(len(part), np.float32)
            scores[order] = await self.batcher.score([part[i] for i in order])
            done.append(scores)
            lines = []
            for i, s in enumerate(scores, lo):
                line = {"index": int(ds.index[i]), "score": float(s), "flagged": bool(s > tau)}
                line["digest"] = digests[line["index"]]
                if ds.harmful[i] >= 0:
                    line["label"] = bool(ds.harmful[i])
                lines.append(json.dumps(line) + "\n")
            yield "".join(lines)
        self.counted("filter", np.concatenate(done), start)


def _json(body: bytes):
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(400, f"body: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RequestError(400, f"body: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def create_app(service: Service) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=service.start, name="filter-loader", daemon=True).start()
        yield
        service.stop()  # after the requests in flight are answered (uvicorn's graceful shutdown)

    s = service
    routes = [Route("/healthz", s.endpoint("healthz", s.healthz, ready=False, auth=False)),
              Route("/metrics", s.endpoint("metrics", s.metrics_text, ready=False)),
              Route("/v1/moderations", s.endpoint("moderations", s.moderations), methods=["POST"]),
              Route("/v1/filter", s.endpoint("filter", s.filter_file), methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)
