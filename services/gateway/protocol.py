"""uvicorn's HTTP/1.1 protocol with a request-header deadline, so slowloris cannot hold connections.

uvicorn has no header timeout. Its keep-alive timer runs only between requests
and any byte received cancels it, and a new connection gets no timer at all: a
client that sends half its headers, or one header byte every few seconds, keeps
its connection (and a file descriptor and a slot of the process) for as long as
it likes. Nothing an ASGI app sees can help, because the app is only called once
the headers are complete. So the protocol itself must keep the deadline: this
subclass of uvicorn's httptools protocol (the one `http="auto"` picks when
httptools is installed, as with `uvicorn[standard]`) arms a timer when the
connection is made and again after each response, disarms it when a request's
headers are complete, and closes the connection when it fires. The timer runs
from the moment the connection is idle, so a keep-alive connection's next request
must also be complete within it; uvicorn's own 5 s keep-alive timer still closes
a quiet idle connection first.

A body that trickles is the app's business (`PAGEWIRE_GATEWAY_BODY_TIMEOUT_S`, a
408 from the webhook endpoint); a body nobody reads (a probe answered at once)
leaves the connection waiting for the next request's headers, so this timer ends
it too. The hooks used (`connection_made`, `on_headers_complete`,
`on_response_complete`, `connection_lost`, `pipeline`) are uvicorn's internals,
pinned by constraints.txt and covered by tests/integration/test_gateway_hardening.py.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("pagewire.gateway")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """An httptools connection closed when request headers are not complete in time."""

    header_timeout_s: float = 10.0

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A pipelined request already has its headers; the parent starts it now.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        # Debug: a slowloris attack would flood the log.
        log.debug(
            "connection closed: request headers not complete in time",
            extra={"header_timeout_s": self.header_timeout_s},
        )
        self.transport.close()


def with_header_timeout(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to pass as `uvicorn.Config(http=...)`; uvicorn builds one per
    connection from the class, so the deadline travels as a class attribute."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": timeout_s})
