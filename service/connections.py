"""Guards below the ASGI app, in uvicorn's HTTP protocol: a deadline for request headers and a
cap on open connections and requests in flight.

Why a protocol subclass and not settings: uvicorn (0.54) arms no timer on a connection until it
has answered a first request (its keep-alive timeout only runs between requests), so a client
that connects and sends nothing, or a header line every few seconds, holds a file descriptor
forever. The ASGI app cannot see such a connection at all: it exists only once the headers are
complete. :class:`GuardedHttpToolsProtocol` arms a timer when a connection opens and when each
later request on it begins, and closes the connection if the headers are not complete in time
(with a JSON 408 when part of a request had arrived; silently when nothing had). Their size is
bounded too: httptools (unlike h11) buffers a request line and headers of any length, so more
than :data:`MAX_HEADER_BYTES` before the headers are complete is answered 431 and closed.

uvicorn's own ``--limit-concurrency`` answers a plain-text 503 and logs a warning for every
refused request, which in a flood is a second flood, in the log. The same rule is applied here
(more than ``limit`` open connections, or ``limit`` requests already in flight), but the request
is only marked in its scope (:data:`OVERLOADED_KEY`): the app's middleware answers it with the
contract's JSON 503, ``Retry-After`` and ``Connection: close``, and counts it in
``abn_requests_total``, without running a route.

The body's own deadline (``ABN_BODY_TIMEOUT_SECONDS``) is enforced in the middleware
(:mod:`service.middleware`), where the request id and the error shape live.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

OVERLOADED_KEY = "abn.overloaded"
# Request line plus headers; the requests of the contract need well under 8 KiB. (nginx allows
# 4 x 8 KiB by default, Node.js 16 KiB.)
MAX_HEADER_BYTES = 64 * 1024


def raw_error(status: str, error_type: str, message: str) -> bytes:
    """A complete JSON error response with ``Connection: close``, written by the protocol
    itself (there is no ASGI request yet to answer through)."""
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    head = (
        f"HTTP/1.1 {status}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def header_timeout_response(seconds: float) -> bytes:
    """The raw 408 written when a request's headers did not arrive in time."""
    return raw_error(
        "408 Request Timeout",
        "header_timeout",
        f"the request headers did not arrive within {seconds:g}s (ABN_HEADER_TIMEOUT_SECONDS); "
        f"the connection is closed",
    )


HEADERS_TOO_LARGE = raw_error(
    "431 Request Header Fields Too Large",
    "headers_too_large",
    f"the request line and headers exceed {MAX_HEADER_BYTES} bytes; the connection is closed",
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a JSON-answered concurrency cap.

    Configure with :meth:`configured`, which returns a subclass carrying the two settings
    (uvicorn builds one protocol object per connection from the class it is given)."""

    header_timeout: float = 5.0
    max_concurrency: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # uvicorn's own check is replaced by the one below
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_begun = False
        self._awaiting_headers = True
        self._header_bytes = 0

    @classmethod
    def configured(
        cls, header_timeout: float, max_concurrency: int | None
    ) -> type[GuardedHttpToolsProtocol]:
        return type(
            cls.__name__,
            (cls,),
            {"header_timeout": header_timeout, "max_concurrency": max_concurrency},
        )

    # -- the header deadline ----------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._request_begun:  # part of a request came: say why it is cut off
            self.transport.write(header_timeout_response(self.header_timeout))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Checked after parsing, so a chunk that completes the headers and carries body bytes
        # after them is not mistaken for oversized headers (asyncio reads at most 256 KiB).
        if (
            self._awaiting_headers
            and self._header_bytes > MAX_HEADER_BYTES
            and not self.transport.is_closing()
        ):
            self._cancel_header_timer()
            self.transport.write(HEADERS_TOO_LARGE)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if not self._awaiting_headers:  # a later request on a kept-alive connection
            self._awaiting_headers = True
            self._header_bytes = 0
        self._arm_header_timer()  # a later request on a kept-alive connection: from its 1st byte

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._request_begun = False
        self._awaiting_headers = False
        limit = self.max_concurrency
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            self.scope[OVERLOADED_KEY] = True  # type: ignore[literal-required]
        super().on_headers_complete()
