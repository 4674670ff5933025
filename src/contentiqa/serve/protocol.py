"""The service's HTTP/1.1 connections: uvicorn's h11 protocol with a deadline on request headers.

uvicorn bounds only the idle time after a response (``timeout_keep_alive``, armed in
``on_response_complete``), and its ``data_received`` cancels even that on the first byte that
arrives: a connection that sends nothing, or trickles a request line, is never closed, while
``limit_concurrency`` counts it, so a few silent sockets lock every client out with 503
(uvicorn's issue #157 lists "--timeout-request-start" as not done; ASGI middleware cannot help:
the application sees a request only once its headers are complete). uvicorn's Config takes a
protocol class (``http=``): this one adds the deadline and changes nothing else.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """A connection must complete a request's headers within ``header_timeout`` seconds of
    opening, or of the first byte of its next request after a keep-alive pause (the pause itself
    is uvicorn's ``timeout_keep_alive``); otherwise it is closed. The body's time is the app's
    (its request deadline)."""

    header_timeout: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Armed while the client owes a request's headers (h11's IDLE: none of it parsed yet);
        the deadline runs from the first moment it owed them, bytes arriving do not extend it."""
        if self.conn.their_state is not h11.IDLE:
            self._stop_watching()
        elif self._header_deadline is None and not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_watching(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.debug("%s: no request headers within %g s, connection closed",
                         "%s:%d" % self.client if self.client else "client", self.header_timeout)
            self.timeout_keep_alive_handler()  # uvicorn's own way to close an idle connection


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``Config(http=...)`` with this header deadline."""
    if seconds <= 0:
        raise ValueError("the header timeout must be positive")
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": float(seconds)})
