"""``contentiqa serve``: an HTTP scoring service with a browser page, the model loaded once.

Endpoints: POST /v1/score (multipart: one or many images -> a row per image, as `contentiqa
score`), POST /v1/explain (one image -> heatmap PNG), GET /v1/models, GET /healthz (200 once
the model is loaded), GET /metrics (Prometheus), the browser page at / and the API docs at
/docs. Images from concurrent requests are scored together (dynamic batching: up to
--max-batch images, waiting at most --max-wait-ms for them); when --max-queue images wait
already, requests get 503 with Retry-After.

Safe by default: listens on 127.0.0.1 only; with --api-key (better: the environment variable
CONTENTIQA_API_KEY, which `ps` does not show) every /v1 call needs the header
'X-API-Key: KEY' or 'Authorization: Bearer KEY'; uploads are bounded (--max-upload-mb,
--max-images, --max-pixels) and decoded in memory / a private temporary file removed at once;
no path or URL a client names is ever opened; CORS is off unless --cors-origin is given.
A connection must send a request's headers within --header-timeout seconds and is closed
after 5 s idle between requests, so silent connections cannot hold the
--max-connections slots. SIGTERM or Ctrl-C: no new connections, requests in flight are
finished, then it exits.

Exit code: 0 stopped (by SIGTERM the signal is re-raised once shut down, as process managers
expect; Ctrl-C 130), 2 usage error: a bad option, an address it cannot listen on (port in
use), or a model that fails to load.

The service's packages (FastAPI, uvicorn) come with `pip install contentiqa`.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import re
import socket
import sys

from ._model_loading import add_scorer_args, heatmap_model, load_scorer, scorer_kwargs
from .common import finite_float, megapixels
from .main import UsageError

KEEP_ALIVE_S = 5
"""An idle connection between requests is closed after this (uvicorn's keep-alive timeout)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP scoring service with a browser page (FastAPI + uvicorn)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_scorer_args(p, " (heatmaps, /v1/explain, use the PyTorch model either way)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 = every interface, "
                        "use with --api-key or behind a reverse proxy)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N",
                   help="images per forward pass at most, from one or several requests (default 8)")
    p.add_argument("--max-wait-ms", type=finite_float, default=5.0, metavar="T",
                   help="how long a waiting image waits for others to fill a batch (default 5 ms)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="images waiting for the model at most; beyond, 503 + Retry-After (default 64)")
    p.add_argument("--max-images", type=int, default=16, metavar="N", help="images per request at most (default 16)")
    p.add_argument("--max-upload-mb", type=finite_float, default=32.0, metavar="MB",
                   help="request body size at most, in MiB (default 32)")
    p.add_argument("--max-pixels", type=megapixels, default=50.0, metavar="MP",
                   help="refuse images larger than MP megapixels (decompression-bomb guard; default 50)")
    p.add_argument("--timeout", type=finite_float, default=60.0, metavar="S",
                   help="a request's upload, wait and scoring must end within S seconds (408/504 beyond; default 60)")
    p.add_argument("--max-connections", type=int, default=128, metavar="N",
                   help="concurrent connections at most; beyond, 503 (default 128)")
    p.add_argument("--header-timeout", type=finite_float, default=10.0, metavar="S",
                   help="a connection that has not sent a request's headers within S seconds of opening (or of "
                        "its next request's first byte) is closed (default 10)")
    p.add_argument("--decode-workers", type=int, default=None, metavar="N",
                   help="threads decoding uploads while the model runs; 0 = on the model's thread, before each batch "
                        "(default: as `contentiqa score --workers`: the cores the model's threads leave free, at most "
                        "2; 0 on a 2-core machine with --runtime torch)")
    p.add_argument("--api-key", default=None,
                   help="require this key on every /v1 call (default: $CONTENTIQA_API_KEY if set; prefer the variable, "
                        "a command line is visible to other users)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (e.g. https://photos.example.org) to call the API; repeatable. "
                        "Default: no CORS")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default info: one line per request)")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config(args: argparse.Namespace):
    from ..serve.app import API_KEY_ENV, ServeConfig

    # the server's limits are checked by ServeConfig; these are the CLI's own options
    checks = [
        (args.max_upload_mb > 0, "--max-upload-mb must be positive"),
        (args.max_pixels > 0, "--max-pixels must be a positive number of megapixels"),
        (args.host.strip() != "", "--host is empty (an unset shell variable?): 127.0.0.1 listens on this machine only"),
        (args.max_connections >= 1, "--max-connections must be at least 1"),
        (args.header_timeout > 0, "--header-timeout must be positive"),
        (0 <= args.port <= 65535, "--port must be 0-65535"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    for origin in args.cors_origin:
        # A browser sends its origin as scheme://host[:port], nothing after: a trailing slash or a
        # path would never match, and every page's call would be refused without a word.
        # (any scheme: chrome-extension://ID, tauri://localhost; "null" is a file:// page's)
        if origin not in ("*", "null") and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+", origin):
            raise UsageError(f"--cors-origin {origin!r} is not an origin: write scheme://host[:port] with no path "
                             "or trailing slash (e.g. https://photos.example.org), null or *")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    flags = {"max_batch": "--max-batch", "max_wait_ms": "--max-wait-ms", "max_queue": "--max-queue",
             "max_images": "--max-images", "max_upload_bytes": "--max-upload-mb", "max_pixels": "--max-pixels",
             "timeout_s": "--timeout", "decode_workers": "--decode-workers",
             "api_key": "--api-key" if args.api_key is not None else API_KEY_ENV}
    try:
        return ServeConfig(
            max_batch=8 if args.max_batch is None else args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_images=args.max_images,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_pixels=int(round(args.max_pixels * 1e6)),
            timeout_s=args.timeout,
            api_key=api_key,
            cors_origins=tuple(args.cors_origin),
            decode_workers=args.decode_workers,
        )
    except ValueError as exc:  # in the options' names
        raise UsageError(re.sub(r"\b(" + "|".join(flags) + r")\b", lambda m: flags[m.group(1)], str(exc))) from None


def _loader(kwargs: dict, quiet: bool = False):
    """What the server's start-up calls (in a thread) to load the model: the scorer `contentiqa
    score` would use with the same flags, and the PyTorch model for heatmaps where there is one."""
    from ..serve.app import LoadedModel
    from ..utils.extras import have, install_hint

    def load() -> LoadedModel:
        notes: list[str] = []
        scorer = load_scorer(kwargs, notes)
        for note in notes:
            print(f"contentiqa serve: note: {note}", file=sys.stderr)
        explainer, why = None, None
        if str(kwargs["spec"] or "").lower().endswith(".onnx"):
            why = "the model runs from an ONNX file alone; heatmaps need its PyTorch model"
        elif not have("torch"):
            why = f"heatmaps need PyTorch, which this install lacks ({install_hint('torch')})"
        else:
            explainer = heatmap_model(scorer, kwargs)
        return LoadedModel(scorer, explainer=explainer, explain_note=why)

    return load


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model starts loading (as uvicorn binds one for
    its workers, ``Config.bind_socket``): an address in use is a usage error, said plainly."""
    # IPPROTO_TCP named: accepted connections inherit it, and asyncio turns Nagle's algorithm
    # off (TCP_NODELAY) only on sockets that say they are TCP; with proto 0 each response's
    # second write waited for the client's delayed ACK (~40 ms a request).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "choose another --port, or stop the server using it" if exc.errno == errno.EADDRINUSE else "check --host"
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    sock.set_inheritable(True)
    return sock


def _log_config(level: str) -> dict:
    """uvicorn's logging, plus this package's loggers (e.g. a client gone before its scoring),
    on the same handler and level."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["contentiqa"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    # the multipart parser warns of each malformed body on a bare stderr line (no time, client or
    # request) through Python's last resort: the client's 400 says why already
    for name in ("python_multipart", "multipart"):  # its module's name since 0.0.13, and before
        config["loggers"][name] = {"handlers": ["default"], "level": "ERROR", "propagate": False}
    return config


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.protocol import with_header_timeout
    except ImportError as exc:
        raise UsageError(f"the service needs packages that are not installed ({exc.name}): reinstall "
                         "contentiqa (pip install contentiqa brings them)") from None
    from .. import DEFAULT_MODEL

    # Cheap checks before the server starts (the model itself loads in the background).
    cfg = _config(args)
    # the runtime, precision and threads of `contentiqa score` (same flags, same rules), and a
    # misspelt name or a missing model file
    kwargs = scorer_kwargs(args)
    spec = kwargs["spec"] or DEFAULT_MODEL
    # Anything else about --model is checked by loading it, as `contentiqa score` does: a
    # failure stops the server at once with that message (exit 2).
    if not _is_loopback(args.host) and not cfg.api_key:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach this port can use it "
              f"(set CONTENTIQA_API_KEY, or keep --host 127.0.0.1 behind a reverse proxy)", file=sys.stderr)

    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        if server is not None:
            server.should_exit = True

    sock = _listen(args.host, args.port)
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    app = create_app(cfg, loader=_loader(kwargs), on_load_error=on_load_error)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=port,
        http=with_header_timeout(args.header_timeout),
        log_level=args.log_level,
        log_config=_log_config(args.log_level),
        # uvicorn counts the asking connection among the open ones: N + 1 lets exactly N in
        limit_concurrency=args.max_connections + 1,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=int(cfg.timeout_s) + 5,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    scheme_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"contentiqa serve: model {spec} loading; http://{scheme_host}:{port}/ (page), /docs (API)"
          + ("; API key required on /v1" if cfg.api_key else ""), file=sys.stderr)
    server.run(sockets=[sock])
    if failure:
        exc = failure[0]
        print(f"contentiqa serve: error: the model failed to load: {exc}", file=sys.stderr)
        return 2
    if not server.started:
        return 1  # uvicorn could not start the app (it said why)
    return 0
