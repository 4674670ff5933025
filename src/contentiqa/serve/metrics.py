"""The service's Prometheus metrics, in a registry of its own.

A registry per app (not prometheus_client's global one) so that several apps in one process
(tests, an embedding application) never share or collide on counters."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/v1/score", "/v1/explain", "/v1/models", "/healthz", "/metrics", "/", "/static", "/docs")
"""Endpoint labels; any other path is counted as 'other' (label values stay few whatever
clients request)."""

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def endpoint_label(path: str) -> str:
    for e in ENDPOINTS:
        if path == e or (e not in ("/",) and path.startswith(e + "/")):
            return e
    if path in ("/openapi.json", "/redoc") or path.startswith("/docs"):  # /docs-assets/ too
        return "/docs"
    return "other"


class Metrics:
    """Requests, images, errors, latency, queue depth and batch sizes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("contentiqa_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.images = Counter("contentiqa_images", "Images received for scoring (/v1/score), by outcome (scored, error, "
                              "abandoned: the client left before they ran, timeout: not scored within the request's "
                              "timeout, refused: the queue filled while they were uploaded)",
                              ["outcome"], registry=r)
        self.errors = Counter("contentiqa_errors", "Failed requests and images, by reason", ["reason"], registry=r)
        self.latency = Histogram("contentiqa_request_latency_seconds", "Time from request start to response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("contentiqa_queue_depth", "Images (and explanations) waiting for the model", registry=r)
        self.batch_size = Histogram("contentiqa_batch_size", "Images per forward pass (dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("contentiqa_batch_seconds", "Seconds per forward pass of a batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("contentiqa_requests_in_flight", "Requests being handled", registry=r)
        self.ready = Gauge("contentiqa_model_ready", "1 once the model is loaded and serving", registry=r)

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def error(self, reason: str, n: int = 1) -> None:
        self.errors.labels(reason).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
