"""The HTTP service: FastAPI app around one loaded model and a dynamic batcher.

Endpoints (see the README and ``/docs``):

- ``POST /v1/score``: multipart upload of one or more images -> one row per image, the row
  of ``contentiqa score`` (score, category, confidence, notes, error) plus the probabilities
  and the scale; a bad image gets its error, the others are scored.
- ``POST /v1/explain``: one image -> PNG heatmap (Grad-CAM x attention, as ``contentiqa explain``).
- ``GET /v1/models``, ``GET /healthz`` (200 only once the model is loaded), ``GET /metrics``
  (Prometheus), ``GET /`` (the browser page, static files of this package).

Safety: uploads are read into memory (bounded per request in bytes and images), decoded by
the same reader as the CLI (``load_image``: its decompression-bomb guard refuses an image
over ``max_pixels`` from its header, before any pixel is allocated) from a private temporary
file that is removed at once; the server never opens a path or URL a client names. With an
API key every ``/v1`` call needs it. CORS is off unless origins are given.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from ..data.imageio import BOMB_HINT, MEMORY_HINT
from ..inference.scorer import Scorer
from ..models.scoring import DOWNSCALE_HINT, Prediction, load_image_safely
from ..reporting.results import row_ok
from .batching import Batcher, BatcherClosed, QueueFull
from .metrics import Metrics, endpoint_label

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
API_KEY_ENV = "CONTENTIQA_API_KEY"
SERVER_BOMB_HINT = "send a smaller photo: the limit is this server's (its operator sets it)"
"""What a client is told to do about an image over the pixel limit (it cannot raise the limit)."""
DOCS_ASSETS = "/docs-assets"
"""Where the API docs' scripts and styles are served (from the fastapi-offline package)."""
# The page loads its own script and style only and shows photos as blob: URLs; should a file
# name or a model's text ever reach the page as markup, no script from elsewhere runs, and no
# other site can frame the page to collect an API key typed into it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@dataclass
class ServeConfig:
    """Limits and batching of one server (the ``contentiqa serve`` options)."""

    max_batch: int = 8
    """Images per forward pass at most (dynamic batching across requests)."""
    max_wait_ms: float = 5.0
    """How long the oldest waiting image waits for others to fill a batch."""
    max_queue: int = 64
    """Images waiting for the model at most; beyond, requests get 503 + Retry-After."""
    max_images: int = 16
    """Images per request at most (413 beyond)."""
    max_upload_bytes: int = 32 * 2**20
    """Request body bytes at most (413 beyond; checked on Content-Length and while reading)."""
    max_pixels: int | None = 50_000_000
    """Pixels per image at most (the CLI's decompression-bomb guard; a server holds several
    images at once, hence lower than the CLI's 100 MP)."""
    timeout_s: float = 60.0
    """A request's upload, queueing and scoring must end within this (408 / 504 beyond)."""
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    decode_workers: int | None = None
    """Threads decoding uploads while the model runs; 0: decode on the model's thread, just
    before its forward pass (what `contentiqa score` does on a machine whose cores the
    model's threads already use: decoding beside the model was measured slower there).
    None: the scorer's own choice, as `contentiqa score --workers`."""
    explain_max_pixels: int = 1_000_000
    """Images are explained on a copy of at most this size (as the CLI's report does)."""
    warmup: bool = True
    """Run one forward pass at load, so the first client does not pay for it."""

    def __post_init__(self) -> None:
        """Refuse values no server can work with (ValueError naming the field): each would start
        a server that answers every request wrongly ("busy, retry" for ever, a limit of 0 bytes,
        a key no HTTP header can carry). The CLI's options are these fields."""
        key = self.api_key
        checks = [
            (self.max_batch >= 1, "max_batch must be at least 1"),
            (0 < self.timeout_s <= 86400, "timeout_s must be positive, at most a day (86400 s)"),
            # a lone image waits this long for others: at the timeout, every lone request times out
            (0 <= self.max_wait_ms < self.timeout_s * 1000,
             "max_wait_ms must be 0 or more and below timeout_s (in ms): a lone image waits that long for others"),
            (self.max_queue >= 1, "max_queue must be at least 1"),
            (self.max_images >= 1, "max_images must be at least 1"),
            (self.max_queue >= self.max_images, f"max_queue ({self.max_queue}) must be at least max_images "
                                                f"({self.max_images}): a request of that many images could never start"),
            (self.max_upload_bytes >= 1024, "max_upload_bytes must be at least 1 KiB: no photo's upload is smaller"),
            (self.max_pixels is None or self.max_pixels >= 1, "max_pixels must be at least one pixel"),
            (self.explain_max_pixels >= 1, "explain_max_pixels must be at least one pixel"),
            (self.decode_workers is None or self.decode_workers >= 0, "decode_workers must be 0 or more"),
            (key is None or (key != "" and key == key.strip()),
             "api_key is empty or starts or ends with spaces, which no HTTP header carries"),
            # headers carry bytes that clients encode differently (browsers refuse non-ASCII)
            (key is None or (key.isascii() and key.isprintable()), "api_key must be printable ASCII"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class LoadedModel:
    """What the service runs: the scorer (:func:`contentiqa.inference.scorer.load_scorer`, the
    one `contentiqa score` would use) and, for heatmaps, the PyTorch model."""

    scorer: Scorer
    explainer: Any = None
    """The PyTorch model ``/v1/explain`` runs Grad-CAM on; None: no heatmaps (see ``explain_note``)."""
    explain_note: str | None = None
    """Why there are no heatmaps, for the page and ``/v1/models`` (None when there are)."""

    @property
    def explainable(self) -> bool:
        return self.explainer is not None


@dataclass
class Decoded:
    """An upload decoded (and for scoring, preprocessed: ``prepared``) before it was queued,
    with the reader's notes (EXIF rotation, ...)."""

    image: Any
    """The decoded photo; None once ``prepared`` holds the model's input (a phone photo's pixels
    are not held while it waits in the queue)."""
    notes: list[str]
    prepared: Any = None


class BodyTooLarge(Exception):
    """The request body passed ``max_upload_bytes``."""


class BodyTimeout(Exception):
    """The client did not send its body within the request timeout (e.g. trickling bytes)."""


class SendTimeout(Exception):
    """The client did not take the answer within the request timeout plus :data:`SEND_GRACE_S`
    (it stopped reading): the connection is dropped, so it cannot hold a connection slot."""


SEND_GRACE_S = 10.0
"""Seconds past the request's deadline a client has to read its answer (a slow link downloading the
docs' scripts); a client that never reads would otherwise hold one of --max-connections for good."""
REQUEST_ID_KEY = "contentiqa.request_id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a proxy's or client's id, safe in a log line
FAILED_LOGGED = 5  # a request's unscored files named in the log line; the client's answer has them all


def model_identity(loaded: LoadedModel) -> dict[str, Any]:
    """Name, weights (+ file hash), package version, runtime, precision and scale of the served
    model: what a client records next to a score to know which model gave it. Server paths are
    not shown."""
    from .. import __version__

    scorer = loaded.scorer
    ident = scorer.identity
    lo, hi = scorer.score_range
    return {
        "name": ident.name,
        "weights": ident.weights.name if ident.weights is not None else None,  # as `score` records it
        "weights_sha256": ident.sha256,  # whole, as `contentiqa score` records it: rows compare
        "version": __version__,
        "runtime": ident.runtime,
        "precision": ident.precision,
        "score_range": [float(lo), float(hi)],
        "higher_is_better": scorer.higher_is_better,
        "predicts_score": scorer.predicts_score,  # false: a content-only model (a category, no score)
        "categories": list(scorer.categories),
        "explain": loaded.explainable,
        "explain_note": loaded.explain_note,
    }


def image_row(pred: Any, index: int, filename: str, scale: list[float]) -> dict[str, Any]:
    """The row of ``contentiqa score`` for one upload (its row builder; the path replaced by
    the client's file name, a label only), plus the scale and the category probabilities."""
    from ..reporting.results import row_from_prediction

    row = row_from_prediction(pred)
    row.pop("path", None)
    probs = pred.probabilities
    return {
        "index": index,
        "filename": filename,
        "score": row["score"],
        "scale": scale,
        "category": row["category"],
        "category_confidence": row["category_confidence"],
        "probabilities": {k: round(float(v), 6) for k, v in probs.items()} if probs else None,
        "notes": row["notes"],
        "error": row["error"],
    }


class Service:
    """The app's state: the model (loaded once, maybe in the background), the batcher, the
    decoding threads and the private folder where uploads are decoded."""

    def __init__(self, config: ServeConfig, loaded: LoadedModel | None = None,
                 loader: Callable[[], LoadedModel] | None = None,
                 on_load_error: Callable[[BaseException], None] | None = None):
        if loaded is None and loader is None:
            raise ValueError("give a loaded model or a loader")
        self.config = config
        self.loaded = loaded
        self.loader = loader
        self.on_load_error = on_load_error
        self.state = "loading"
        self.error: str | None = None
        self.identity: dict[str, Any] | None = None
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.decode_pool: ThreadPoolExecutor | None = None
        self.tmpdir: str | None = None
        self.ready_event = threading.Event()
        self.metrics.track_queue(lambda: self.batcher.depth if self.batcher is not None else 0)

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="contentiqa-serve-")  # mode 0700: this user only
        if self.loaded is not None:
            self._activate(self.loaded)
        else:
            threading.Thread(target=self._load, name="contentiqa-load", daemon=True).start()

    def _load(self) -> None:
        try:
            assert self.loader is not None
            self._activate(self.loader())
        except BaseException as exc:  # reported on /healthz and to the command
            self.state = "failed"
            self.error = str(exc) or type(exc).__name__
            self.ready_event.set()
            if self.on_load_error is not None:
                self.on_load_error(exc)

    def _activate(self, loaded: LoadedModel) -> None:
        if self.config.max_pixels is not None:
            loaded.scorer.max_pixels = int(self.config.max_pixels)
        self.loaded = loaded
        self.identity = model_identity(loaded)
        decode = self.config.decode_workers
        decode = loaded.scorer.default_workers() if decode is None else decode
        if decode > 0:
            self.decode_pool = ThreadPoolExecutor(max_workers=decode, thread_name_prefix="contentiqa-decode")
        self.batcher = Batcher(self._run_batch, max_batch=self.config.max_batch,
                               max_wait_s=self.config.max_wait_ms / 1000.0, max_queue=self.config.max_queue).start()
        if self.config.warmup:
            from PIL import Image

            size = max(64, int(loaded.scorer.min_size))
            self.batcher.submit([Image.new("RGB", (size, size), (128, 128, 128))]).result()
        self.batcher.on_batch = self.metrics.on_batch  # clients' batches only: the warm-up is no one's
        self.state = "ready"
        self.metrics.ready.set(1)
        self.ready_event.set()

    async def stop(self) -> None:
        """After the server stopped taking requests (uvicorn finished the in-flight ones):
        finish anything still queued, then release the threads and the upload folder."""
        self.state = "stopping"
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close, self.config.timeout_s)
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=True, cancel_futures=True)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def require_ready(self) -> None:
        if self.state != "ready" or self.batcher is None:
            self.metrics.error("not_ready")
            detail = {"loading": "the model is still loading", "stopping": "the server is shutting down"}.get(
                self.state, f"the model failed to load: {self.error}")
            raise HTTPException(503, detail, headers={"Retry-After": "5"} if self.state == "loading" else None)

    # -- work ------------------------------------------------------------------------------------
    def _run_batch(self, items: list) -> list:
        """One forward pass (the worker thread) over decoded images, or upload bytes decoded
        here first (``decode_workers=0``): the scoring engine of ``contentiqa score`` (equal
        sizes stacked, channels-last, inference mode, a model failure becomes each image's
        error), scores clipped to the scale as the CLI shows them. One Prediction per item;
        an upload that cannot be decoded gets its error."""
        from ..inference.engine import Prepared

        assert self.loaded is not None
        scorer = self.loaded.scorer

        def entry(x: Any) -> tuple[Any, list[str], str | None]:
            if isinstance(x, bytes):
                return self.decode(x)
            if isinstance(x, Decoded):
                return (Prepared(x.prepared) if x.prepared is not None else x.image), x.notes, None
            return x, [], None

        decoded = [entry(x) for x in items]
        images = [img for img, _, err in decoded if err is None]
        scored = scorer.run(images, batch_size=len(images), workers=0, concurrency=1) if images else []
        preds = iter(scored or [])
        out = []
        for _, notes, err in decoded:
            if err is not None:
                out.append(Prediction(path=None, score=None, error=err, notes=list(notes)))
                continue
            p = scorer.clip_to_scale(next(preds))
            p.notes = list(notes) + [n for n in p.notes if n not in notes]
            out.append(p)
        return out

    def decode(self, data: bytes) -> tuple[Any, list[str], str | None]:
        """(image, notes, error) for uploaded bytes, read by the CLI's image reader (same
        checks, same decompression-bomb guard) from a private temporary file removed at once."""
        assert self.loaded is not None and self.tmpdir is not None
        fd, tmp = tempfile.mkstemp(dir=self.tmpdir, suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            img, _, notes, err = load_image_safely(tmp, self.loaded.scorer)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if err is not None:  # a client learns nothing of the server's folders from an error
            err = (err.replace(tmp, "<upload>").replace(BOMB_HINT, SERVER_BOMB_HINT)
                   .replace(MEMORY_HINT, "the server has not the memory for it now: send a smaller photo")
                   .replace(DOWNSCALE_HINT, "this server downscales photos to that longest side"))
            for folder in (self.tmpdir, os.path.realpath(self.tmpdir), tempfile.gettempdir()):
                err = err.replace(folder, "<server temp>")
        return img, notes, err

    def decode_for_scoring(self, data: bytes) -> tuple[Decoded | None, list[str], str | None]:
        """:meth:`decode`, then the model's preprocessing, both on a decoding thread: the thread
        that runs the model only stacks and runs (preprocessing there took ~8 % of its time)."""
        img, notes, err = self.decode(data)
        if err is not None:
            return None, notes, err
        assert self.loaded is not None
        try:
            prepared = self.loaded.scorer.preprocess(img)
        except Exception as exc:  # a preprocessing failure is that upload's error, as in the engine
            return None, notes, f"preprocessing failed: {str(exc) or type(exc).__name__}"
        return Decoded(None, list(notes), prepared), notes, None  # the decoded photo is not kept: only its input

    def remaining(self, request: Request) -> float:
        deadline = request.scope.get("contentiqa.deadline")
        return self.config.timeout_s if deadline is None else max(0.0, deadline - time.monotonic())


# -- request plumbing -------------------------------------------------------------------------
class RequestGuard:
    """ASGI middleware: per-request deadline and body-size limit, and the request metrics.

    The body is counted as it arrives (a missing or lying Content-Length does not help a
    client past the limit); a client that trickles its body is cut off at the deadline."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        svc = self.service
        cfg = svc.config
        metrics = svc.metrics
        start = time.perf_counter()
        deadline = time.monotonic() + cfg.timeout_s
        scope["contentiqa.deadline"] = deadline
        label = endpoint_label(scope.get("path", ""))
        status, status_sent = [500], [False]
        body = {"bytes": 0, "done": False}
        rid = _request_id(scope)
        scope[REQUEST_ID_KEY] = rid

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                status_sent[0] = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            try:
                await asyncio.wait_for(send(message), max(deadline + SEND_GRACE_S - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                raise SendTimeout() from None

        async def guarded_receive():
            if body["done"]:
                return await receive()  # e.g. listening for a disconnect: no deadline
            left = deadline - time.monotonic()
            if left <= 0:
                raise BodyTimeout()
            try:
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                body["bytes"] += len(message.get("body", b""))
                if body["bytes"] > cfg.max_upload_bytes:
                    raise BodyTooLarge()
                if not message.get("more_body", False):
                    body["done"] = True
            return message

        metrics.in_flight.inc()
        try:
            length = _content_length(scope)
            if length is not None and length > cfg.max_upload_bytes:
                metrics.error("too_large")
                response = JSONResponse({"detail": _too_large(cfg)}, status_code=413, headers={"Connection": "close"})
                await response(scope, receive, send_wrapper)
                return
            await self.app(scope, guarded_receive, send_wrapper)
        except SendTimeout:  # returning without a complete answer makes the server close the connection
            metrics.error("send_timeout")
            logger.info("%s: client stopped reading its answer to %s (request %s); connection dropped",
                        _client_name(scope), scope.get("path", ""), rid)
        except Exception:
            # A bug: the server's own 500 (outside this guard) would carry no request id, and the
            # traceback uvicorn logs could not be matched to the client's report. Answered here;
            # raised on, for that traceback.
            if not status_sent[0]:
                logger.error("request %s: internal error answering %s", rid, scope.get("path", ""))
                response = JSONResponse({"detail": "internal server error", "request_id": rid}, status_code=500)
                await response(scope, receive, send_wrapper)
            raise
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(label, str(status[0])).inc()
            metrics.latency.labels(label).observe(time.perf_counter() - start)


def _request_id(scope) -> str:
    """The client's X-Request-ID when it is a plain token (a proxy's id ties its log to this
    server's), else a new one: whatever a client sends must not forge or break log lines."""
    for k, v in scope.get("headers", []):
        if k == b"x-request-id":
            text = v.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def request_id(request: Request) -> str:
    return request.scope.get(REQUEST_ID_KEY, "-")


def _client_name(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


async def _disconnected(request: Request) -> None:
    """Return once the client has disconnected. Called after the body was read: the server's
    next message is then the disconnect (it waits for it; a test client, for the response)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _content_length(scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


def _too_large(cfg: ServeConfig) -> str:
    return f"request body over the limit of {cfg.max_upload_bytes / 2**20:g} MiB"


class _TerminatedParser(MultiPartParser):
    """Starlette's multipart parser, noting whether the body reached its closing delimiter: the
    parser drops an unterminated last part without a word, so a cut-off upload (or a closing line
    without the CRLF before it) would answer 200 with a photo missing. Its own end callback is
    the signal: it fires only once ``CRLF--BOUNDARY--`` was parsed, where the parse ended."""

    terminated = False

    def on_end(self) -> None:
        super().on_end()
        self.terminated = True


async def read_uploads(request: Request, svc: Service, max_files: int) -> list[tuple[str, bytes]]:
    """The uploaded files of a multipart request, as (client file name, bytes), in order."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        svc.metrics.error("bad_request")
        raise HTTPException(415, "send the images as multipart/form-data file parts (e.g. curl -F files=@photo.jpg)")
    parser = _TerminatedParser(request.headers, request.stream(), max_files=max_files, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            svc.metrics.error("too_large")
            raise HTTPException(413, f"at most {max_files} image(s) per request") from None
        svc.metrics.error("bad_request")
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    if not parser.terminated:
        await form.close()
        svc.metrics.error("bad_request")
        raise HTTPException(400, "malformed multipart body: it ends before its closing boundary "
                                 "(a cut-off upload; its last part would be lost)")
    try:
        uploads: list[tuple[str, bytes]] = []
        fields: list[str] = []
        for k, (name, value) in enumerate(form.multi_items(), 1):
            if not isinstance(value, UploadFile):
                fields.append(f"part {k} ({name!r})")
                continue
            data = await value.read()
            uploads.append(((value.filename or "")[:255], data))
    finally:
        await form.close()
    if not uploads and not fields:
        svc.metrics.error("bad_request")
        raise HTTPException(400, "no image files in the request: send one or more file parts (field name 'files')")
    if fields:
        # a part without filename= (or with only filename*=) is a text field to the parser: dropped,
        # the rows after it answered for the wrong uploads, with a 200
        svc.metrics.error("bad_request")
        raise HTTPException(400, f"{fields[0]} is not a file part: send each image with a filename "
                                 "(curl -F files=@photo.jpg)")
    return uploads


def _multipart_doc(many: bool) -> dict[str, Any]:
    files = {"type": "array", "items": {"type": "string", "format": "binary"}} if many else {"type": "string", "format": "binary"}
    name = "files" if many else "file"
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": {name: files}, "required": [name]}}}}}


def create_app(
    config: ServeConfig | None = None,
    model: LoadedModel | None = None,
    loader: Callable[[], LoadedModel] | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model`` (already loaded) or what ``loader()`` returns (loaded
    in a background thread at start-up: ``/healthz`` answers 503 until it is ready)."""
    from .. import __version__

    cfg = config or ServeConfig()
    svc = Service(cfg, loaded=model, loader=loader, on_load_error=on_load_error)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    # /docs and /redoc load Swagger UI and ReDoc from this server (fastapi-offline ships them),
    # not from a CDN: they work offline, and a user's browser contacts no third party (nor
    # Swagger's online validator, switched off).
    app = FastAPIOffline(
        title="contentiqa",
        version=__version__,
        description="No-reference image quality scores (and where the model looked) for uploaded photos.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.service = svc

    def require_key(request: Request) -> None:
        if not cfg.api_key:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode("utf-8"), cfg.api_key.encode("utf-8")):
            svc.metrics.error("unauthorized")
            raise HTTPException(401, "missing or wrong API key (header 'X-API-Key: KEY' or 'Authorization: Bearer KEY')",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(BodyTooLarge)
    async def _too_large_handler(_request: Request, _exc: BodyTooLarge):
        svc.metrics.error("too_large")
        return JSONResponse({"detail": _too_large(cfg)}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(BodyTimeout)
    async def _body_timeout_handler(_request: Request, _exc: BodyTimeout):
        svc.metrics.error("timeout")
        return JSONResponse({"detail": f"request body not received within {cfg.timeout_s:g} s"}, status_code=408,
                            headers={"Connection": "close"})

    @app.exception_handler(ClientDisconnect)
    async def _disconnect_handler(_request: Request, _exc: ClientDisconnect):
        svc.metrics.error("disconnected")
        return Response(status_code=499)  # nobody reads it: the client is gone

    @contextmanager
    def admission():
        """The batcher's refusals as HTTP answers: 503, with Retry-After when busy."""
        try:
            yield
        except QueueFull as exc:
            svc.metrics.error("queue_full")
            raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": f"{exc.retry_after:.0f}"}) from None
        except BatcherClosed:
            svc.metrics.error("not_ready")
            raise HTTPException(503, "the server is shutting down") from None

    def abandon(request: Request, n_images: int, scoring: bool = True) -> ClientDisconnect:
        """The client left before its work ran: count it (images sent for scoring), say so, and
        answer nobody."""
        if scoring:
            svc.metrics.images.labels("abandoned").inc(n_images)
        client = request.client
        logger.info("%s: client gone before %d image(s) of %s were run; dropped (request %s)",
                    f"{client.host}:{client.port}" if client else "a client", n_images, request.url.path,
                    request_id(request))
        return ClientDisconnect()  # its handler counts the request as disconnected (499)

    async def within_deadline(request: Request, work: "asyncio.Future[Any]", cancel: Callable[[], Any], n_images: int,
                              what: str, scoring: bool = True) -> Any:
        """``work``'s result if it ends within the request's deadline while its client is there;
        else ``cancel()`` it, and drop the request (client gone: nobody would read the result)
        or answer 504. ``scoring``: the images were sent for scoring (the images metric counts
        their outcome; an explanation's is its request's)."""
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=svc.remaining(request),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if work in done:
            return work.result()
        cancel()
        # Work already running ends later with its result, or an error nobody awaits (a cancelled
        # gather's CancelledError): read it then, or asyncio logs it as an error-level traceback.
        work.add_done_callback(lambda f: f.cancelled() or f.exception())
        if gone in done:
            raise abandon(request, n_images, scoring)
        svc.metrics.error("timeout")
        if scoring:
            svc.metrics.images.labels("timeout").inc(n_images)
        raise HTTPException(504, f"not {what} within the request timeout of {cfg.timeout_s:g} s")

    async def run_queued(request: Request, submit: Callable[[], Any], n_images: int, scoring: bool = True) -> Any:
        """Queue work on the batcher and wait for it within the request's deadline (dropped from
        the queue when the deadline passes or the client disconnects)."""
        if await request.is_disconnected():
            raise abandon(request, n_images, scoring)
        batcher = svc.batcher
        assert batcher is not None
        try:
            with admission():
                fut = submit()
        except HTTPException:  # the queue filled while the upload was read: those images never ran
            if scoring:
                svc.metrics.images.labels("refused").inc(n_images)
            raise
        return await within_deadline(request, asyncio.wrap_future(fut), lambda: batcher.cancel(fut), n_images,
                                     "scored" if scoring else "explained", scoring)

    async def decoded_within(request: Request, fn: Callable[[Any], Any], items: list[Any], scoring: bool = True) -> list[Any]:
        """``fn`` of each upload on the decode threads (``None`` pool: the loop's default
        executor), within the request's deadline and while its client is there; decodes not
        yet started when either ends are dropped: a request of many large images must not keep
        the cores busy for a client that has gone or given up."""
        loop = asyncio.get_running_loop()
        work = asyncio.gather(*(loop.run_in_executor(svc.decode_pool, fn, d) for d in items))
        return await within_deadline(request, work, work.cancel, len(items), "decoded", scoring)

    @app.post("/v1/score", dependencies=[Depends(require_key)], openapi_extra=_multipart_doc(True),
              summary="Score one or many uploaded images")
    async def score(request: Request) -> JSONResponse:
        """Each file part is one image. The answer has one row per image, in order: the score
        on the model's scale, its category with confidence and probabilities, notes, and
        ``error`` (null when scored). A bad image gets its error; the others are scored."""
        svc.require_ready()
        assert svc.batcher is not None
        with admission():  # when busy, say so before the upload is read and decoded
            svc.batcher.check(1, svc.remaining(request))
        uploads = await read_uploads(request, svc, cfg.max_images)
        items: list[Any] = [data for _, data in uploads]  # decoded on the model's thread ...
        preds: list[Any] = [None] * len(items)
        if svc.decode_pool is not None:  # ... or here, in parallel, while the model runs
            decoded = await decoded_within(request, svc.decode_for_scoring, items)
            for i, (ready, notes, err) in enumerate(decoded):
                if err is not None:
                    preds[i] = Prediction(path=None, score=None, error=err, notes=list(notes))
                else:
                    items[i] = ready
        todo = [i for i, p in enumerate(preds) if p is None]
        # counted now: a timeout or a full queue for the rest must not lose them from the images metric
        undecodable = len(preds) - len(todo)
        if undecodable:
            svc.metrics.images.labels("error").inc(undecodable)
            svc.metrics.error("bad_image", undecodable)
        batcher = svc.batcher
        within = svc.remaining(request)
        if todo:
            done = await run_queued(request, lambda: batcher.submit([items[i] for i in todo], within_s=within),
                                    len(todo))
            for i, p in zip(todo, done):
                preds[i] = p
        assert svc.identity is not None
        scale = svc.identity["score_range"]
        rows = [image_row(p, i, name, scale) for i, ((name, _), p) in enumerate(zip(uploads, preds))]
        failed = [r for r in rows if not row_ok(r)]
        n_failed = len(failed)
        svc.metrics.images.labels("scored").inc(len(rows) - n_failed)
        if n_failed > undecodable:
            svc.metrics.images.labels("error").inc(n_failed - undecodable)
            svc.metrics.error("bad_image", n_failed - undecodable)
        if failed:  # the operator's side of the client's error rows: which files, why (quoted: names are the client's)
            shown = "; ".join(f"{r['filename']!r}: {r['error']!r}" for r in failed[:FAILED_LOGGED])
            logger.info("request %s: %d of %d image(s) not scored: %s%s", request_id(request), n_failed, len(rows),
                        shown, f"; and {n_failed - FAILED_LOGGED} more" if n_failed > FAILED_LOGGED else "")
        return JSONResponse({"model": svc.identity, "n_images": len(rows), "n_failed": n_failed, "results": rows})

    @app.post("/v1/explain", dependencies=[Depends(require_key)], openapi_extra=_multipart_doc(False),
              response_class=Response, responses={200: {"content": {"image/png": {}}}},
              summary="Heatmap of where the model looked, as a PNG")
    async def explain_image(
        request: Request,
        target: str = Query("both", pattern="^(quality|category|both)$",
                            description="quality or category: the image with that heatmap blended on it; both: the "
                                        "figure of `contentiqa explain` (image, quality and, where the model has one, "
                                        "category heatmap side by side)"),
        max_size: int = Query(512, ge=64, le=2048, description="longer side of a quality/category overlay, in pixels"),
    ) -> Response:
        """One image (one file part). The score and category are also in the response headers
        ``X-Score`` and ``X-Category``."""
        svc.require_ready()
        assert svc.loaded is not None and svc.batcher is not None
        if not svc.loaded.explainable:
            raise HTTPException(501, f"no heatmaps from this server: {svc.loaded.explain_note or 'no PyTorch model'}")
        if target == "category" and not svc.loaded.scorer.has_content_head:
            raise HTTPException(400, "this model has no content head: use target=quality")
        if target == "quality" and not svc.loaded.scorer.predicts_score:
            raise HTTPException(400, "this model predicts no quality score (content only): use target=category")
        uploads = await read_uploads(request, svc, 1)
        ((img, _notes, err),) = await decoded_within(request, svc.decode, [uploads[0][1]], scoring=False)
        if err is not None:
            svc.metrics.error("bad_image")
            logger.info("request %s: %r not explained: %r", request_id(request), uploads[0][0], err)
            raise HTTPException(422, f"{uploads[0][0] or 'upload'}: {err}")
        batcher = svc.batcher
        try:
            png, headers = await run_queued(request, lambda: batcher.call(
                lambda: _render_explanation(svc, img, target, max_size), within_s=svc.remaining(request)), 1,
                scoring=False)
        except (ValueError, TypeError, RuntimeError) as exc:  # the model cannot explain this input
            svc.metrics.error("explain_failed")
            raise HTTPException(422, f"cannot explain this image: {exc}") from None
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/v1/models", dependencies=[Depends(require_key)], summary="The model this server runs, and its limits")
    async def models() -> dict[str, Any]:
        svc.require_ready()
        return {
            "models": [svc.identity],
            "limits": {
                "max_images": cfg.max_images,
                "max_upload_bytes": cfg.max_upload_bytes,
                "max_pixels": cfg.max_pixels,
                "timeout_s": cfg.timeout_s,
                "max_batch": cfg.max_batch,
                "max_queue": cfg.max_queue,
            },
        }

    @app.get("/healthz", summary="200 once the model is loaded and serving; 503 before, during shutdown or after a failed load")
    async def healthz() -> JSONResponse:
        body: dict[str, Any] = {"status": svc.state}
        if svc.state == "ready" and svc.identity is not None:
            body.update(model=svc.identity["name"], weights=svc.identity["weights"],
                        queue_depth=svc.batcher.depth if svc.batcher else 0)
        if svc.error:  # it names server paths: only for those who may use the service
            body["error"] = svc.error if not cfg.api_key else "the model failed to load (the server's log says why)"
        return JSONResponse(body, status_code=200 if svc.state == "ready" else 503)

    # health checkers (load balancers, uptime monitors) often probe with HEAD: FastAPI's routes
    # answer only the methods named, so HEAD gets its own route (out of the schema, where it
    # would repeat GET's operation id)
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=svc.metrics.content_type)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(RequestGuard, service=svc)
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"],
                           expose_headers=["X-Score", "X-Category", "X-Heatmap-Empty", "Retry-After", "X-Request-ID"])
    return app


def _render_explanation(svc: Service, img: Any, target: str, max_size: int) -> tuple[bytes, dict[str, str]]:
    """PNG bytes and headers for an explanation (on the batcher's thread: Grad-CAM hooks the
    model's modules, which no scoring batch may pass through meanwhile). The score and category
    are /v1/score's for this image (the served runtime and precision); the heatmaps are PyTorch's,
    the category one of that category."""
    from ..explain import explain
    from ..reporting.results import row_from_prediction

    assert svc.loaded is not None and svc.tmpdir is not None
    model = svc.loaded.explainer
    pred = svc._run_batch([img])[0]  # the served scorer: the row /v1/score gives this image
    if pred.error is not None:
        raise ValueError(pred.error)
    targets = {"quality": ("quality",), "category": ("category",), "both": ("quality", "category")}[target]
    if not model.has_content_head:
        targets = tuple(t for t in targets if t != "category") or ("quality",)
    if not model.predicts_score:  # content only: "both" is its category map
        targets = tuple(t for t in targets if t != "quality") or ("category",)
    exp = explain(model, img, targets=targets, category=pred.category, max_pixels=svc.config.explain_max_pixels,
                  exact_score=False)
    exp = exp.scored(pred, svc.loaded.scorer.identity.label)
    headers: dict[str, str] = {}
    if pred.score is not None:
        headers["X-Score"] = repr(row_from_prediction(pred)["score"])  # the number /v1/score's row has
    if pred.category is not None:
        # Percent-encoded UTF-8: a header is Latin-1 bytes, and a category trained from one's own
        # labels ("夜景") would otherwise lose the heatmap to a server error.
        headers["X-Category"] = quote(pred.category, safe=" ")
    if target == "both":
        fd, tmp = tempfile.mkstemp(dir=svc.tmpdir, suffix=".png")
        os.close(fd)
        try:
            exp.save_figure(tmp, target="both")
            return Path(tmp).read_bytes(), headers
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    which = "fused" if target == "quality" else "fused_category"
    m = exp.get_map(which)
    if m is not None and not m.any():  # drawn flat, it would read as "everywhere alike": said, as the CLI says it
        headers["X-Heatmap-Empty"] = target
    buf = io.BytesIO()
    exp.overlay(which, max_size=max_size).save(buf, format="PNG")
    return buf.getvalue(), headers
