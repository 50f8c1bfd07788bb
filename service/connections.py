"""Guards below the ASGI app, in uvicorn's HTTP protocol: a deadline for request headers,
request buffering under the body's deadline, and a cap on open connections and requests in
flight.

Why a protocol subclass and not settings: uvicorn (0.54) arms no timer on a connection until it
has answered a first request (its keep-alive timeout only runs between requests), so a client
that connects and sends nothing, or a header line every few seconds, holds a file descriptor
forever. The ASGI app cannot see such a connection at all: it exists only once the headers are
complete. :class:`GuardedHttpToolsProtocol` arms a timer when a connection opens and when each
later request on it begins (at the end of the read it began in, unless its headers came whole
in it), and closes the connection if the headers are not complete in time
(with a JSON 408 when part of a request had arrived; silently when nothing had). Their size is
bounded too: httptools (unlike h11) buffers a request line and headers of any length, so more
than :data:`MAX_HEADER_BYTES` before the headers are complete is answered 431 and closed.

Both answers are closed the way nginx's ``lingering_close`` does it: the answer is written, the
sending side shut (the client reads the answer and then end of file), and what the client still
sends is read and dropped until it closes or :data:`LINGER_SECONDS` pass. Closing at once while
request bytes are still arriving makes the kernel reset the connection, and a reset discards the
answer the client had not read yet: the client saw ``Connection reset by peer`` instead of 431.

uvicorn's own ``--limit-concurrency`` answers a plain-text 503 and logs a warning for every
refused request, which in a flood is a second flood, in the log. The same rule is applied here
(more than ``limit`` open connections, or ``limit`` requests already in flight), but the request
is only marked in its scope (:data:`OVERLOADED_KEY`): the app's middleware answers it with the
contract's JSON 503, ``Retry-After`` and ``Connection: close``, and counts it in
``abn_requests_total``, without running a route.

**Request buffering** (nginx's ``proxy_request_buffering``): the app is started for a request
when its body has arrived, not when its headers have. uvicorn starts the request's task at the
headers, so a connection that trickles its body holds the whole ASGI call chain (some twenty
coroutines with their frames, the request's scope and state) for as long as it trickles, and is
woken once per segment. Under a flood of such connections that is most of the heap the cyclic
collector walks, and its collections paused the event loop for every other request
(docs/operations.md, Slow and vanishing clients). Held here, a slow upload costs the protocol
object, its buffered bytes and one timer. A request is held when it declares a body of at most
``ABN_MAX_BODY_BYTES`` or is chunked; it is released when the body is complete, when
:data:`HIGH_WATER_LIMIT` bytes have buffered (uvicorn's flow-control limit, where reading would
pause: a large upload then streams to the app as before), when its connection is lost (the app
sees the disconnect, counted 499), when the server shuts down (the app answers within the
grace), or at the body's deadline, marked :data:`BODY_LATE_KEY`, which the middleware answers
408. A request that expects ``100 Continue``, declares a body over the limit or is over the
concurrency cap is started at once: it must be answered before its body comes.

The body's deadline is ``ABN_BODY_TIMEOUT_SECONDS`` after the headers plus up to
:data:`DEADLINE_SPREAD` of it more, drawn per request (:func:`body_deadline`): connections
opened together, as a flood's are, are then not cut off together and do not reconnect
together. The protocol puts it in the scope (:data:`BODY_DEADLINE_KEY`); the middleware holds a
released body that is still streaming to the same deadline. A streaming body (a large upload,
or one that expects ``100 Continue``) wakes the app when the limit has buffered or the body is
complete, not once per segment.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from starlette.types import ASGIApp, Scope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.response_writes import HeadWithBody
from service.settings import Settings

OVERLOADED_KEY = "abn.overloaded"
ARRIVAL_KEY = "abn.arrival"  # time.monotonic() when the request's headers were complete
BODY_DEADLINE_KEY = "abn.body_deadline"  # time.monotonic() by which the body must have arrived
BODY_LATE_KEY = "abn.body_late"  # set when a held request reached its deadline without its body
BODY_COMPLETE_KEY = "abn.body_complete"  # set when the whole body has arrived
# A future resolved when the request's client closes the connection: what a route waiting for
# the model watches, with no task reading ASGI messages for it (service.jobs.wait_all)
GONE_KEY = "abn.gone"
DEADLINE_SPREAD = 0.1  # a body's deadline is 1 to 1.1 x ABN_BODY_TIMEOUT_SECONDS after arrival
# Request line plus headers; the requests of the contract need well under 8 KiB. (nginx allows
# 4 x 8 KiB by default, Node.js 16 KiB.)
MAX_HEADER_BYTES = 64 * 1024
# How long a connection answered by the protocol itself drains the client's bytes before it is
# closed (nginx's lingering_time is 30 s; this is only to let the answer be read, not to wait)
LINGER_SECONDS = 2.0


def body_deadline(arrival: float, body_timeout: float) -> float:
    """When a request that arrived at ``arrival`` must have its whole body: never sooner than
    ``body_timeout``, spread so requests that arrived together are not cut off together."""
    return arrival + body_timeout * (1.0 + DEADLINE_SPREAD * random.random())


def declares_body(scope: Scope) -> bool:
    """Whether the request declares a body (a non-zero Content-Length, or chunked)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _holdable(scope: Scope, max_body_bytes: int) -> bool:
    """A body the app would read: declared at most ``max_body_bytes``, or chunked. (One
    declared larger is refused by the app from its headers, at once.)"""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip().isdigit() and int(value) <= max_body_bytes
    return True


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


def _default(setting: str) -> Any:
    return Settings.model_fields[setting].default


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, request buffering under the body's
    deadline, and a JSON-answered concurrency cap.

    Configure with :meth:`configured`, which returns a subclass carrying the settings
    (uvicorn builds one protocol object per connection from the class it is given)."""

    header_timeout: float = _default("header_timeout_seconds")
    body_timeout: float = _default("body_timeout_seconds")
    max_body_bytes: int = _default("max_body_bytes")
    max_concurrency: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # uvicorn's own check is replaced by the one below
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_begun = False
        self._awaiting_headers = True
        self._header_bytes = 0
        self._held: tuple[RequestResponseCycle, ASGIApp] | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    @classmethod
    def configured(
        cls,
        header_timeout: float,
        body_timeout: float,
        max_body_bytes: int,
        max_concurrency: int | None,
    ) -> type[GuardedHttpToolsProtocol]:
        settings = {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_body_bytes": max_body_bytes,
            "max_concurrency": max_concurrency,
        }
        return type(cls.__name__, (cls,), settings)

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
            self._answer_and_close(header_timeout_response(self.header_timeout))
        else:
            self.transport.close()

    def _answer_and_close(self, response: bytes) -> None:
        """Write ``response``, shut the sending side, and drop what the client still sends
        until it closes or :data:`LINGER_SECONDS` pass (see the module's docstring)."""
        self._cancel_header_timer()
        self.transport.write(response)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:  # answered and half-closed: the rest is dropped
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if not self._awaiting_headers or self.transport.is_closing():
            return
        # Checked after parsing, so a chunk that completes the headers and carries body bytes
        # after them is not mistaken for oversized headers (asyncio reads at most 256 KiB).
        if self._header_bytes > MAX_HEADER_BYTES:
            self._answer_and_close(HEADERS_TOO_LARGE)
        elif self._request_begun:  # a request began in this read and its headers are not all here
            self._arm_header_timer()  # (one whose headers came whole never arms and cancels it)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)  # marks the cycle disconnected
        if self.cycle is not None and not self.cycle.response_complete:
            gone = self.cycle.scope.get(GONE_KEY)
            if gone is not None and not gone.done():
                gone.set_result(None)
        self._release()  # the app sees the disconnect: 499, counted and logged

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if not self._awaiting_headers:  # a later request on a kept-alive connection
            self._awaiting_headers = True
            self._header_bytes = 0
        # its header deadline is armed at the end of this read, if they are still incomplete

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._request_begun = False
        self._awaiting_headers = False
        arrival = time.monotonic()
        self.scope[ARRIVAL_KEY] = arrival  # type: ignore[typeddict-unknown-key]
        self.scope[BODY_DEADLINE_KEY] = body_deadline(arrival, self.body_timeout)  # type: ignore[typeddict-unknown-key]
        self.scope[GONE_KEY] = self.loop.create_future()  # type: ignore[typeddict-unknown-key]
        limit = self.max_concurrency
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            self.scope[OVERLOADED_KEY] = True  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()  # makes the request's cycle; its task has not run yet
        cycle = self.cycle
        # (an upgrade makes no cycle; a HEAD answer has no body write to carry its head)
        if cycle is not None and cycle.scope is self.scope and self.scope["method"] != "HEAD":
            cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]

    # -- request buffering ------------------------------------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:  # type: ignore[override]
        scope = cycle.scope
        if (
            cycle.more_body  # its body is still to come (a pipelined one may be here already)
            and declares_body(scope)
            and _holdable(scope, self.max_body_bytes)
            and not cycle.waiting_for_100_continue
            and not scope.get(OVERLOADED_KEY)
        ):
            self._held = (cycle, app)  # started by _release
            delay = max(0.0, scope[BODY_DEADLINE_KEY] - time.monotonic())  # type: ignore[typeddict-item]
            self._body_timer = self.loop.call_later(delay, self._body_late)
            return
        super()._start_asgi_task(cycle, app)  # type: ignore[arg-type]

    def _release(self) -> None:
        """Start the held request's app (its body is here, at the limit, late or cut off)."""
        if self._held is None:
            return
        cycle, app = self._held
        self._held = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super()._start_asgi_task(cycle, app)  # type: ignore[arg-type]

    def _body_late(self) -> None:
        self._body_timer = None
        if self._held is not None:
            self._held[0].scope[BODY_LATE_KEY] = True  # type: ignore[typeddict-unknown-key]
            self._release()

    def on_body(self, body: bytes) -> None:
        """uvicorn's, but the app is woken only once the flow-control limit has buffered (or
        by the body's completion, a disconnect or the deadline), not for every segment."""
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
            cycle.message_event.set()
            self._release()  # a large upload: it streams to the app from here

    def on_message_complete(self) -> None:
        self.cycle.scope[BODY_COMPLETE_KEY] = True  # type: ignore[typeddict-unknown-key]
        super().on_message_complete()
        self._release()

    def shutdown(self) -> None:
        """The server is stopping: a held request goes to the app as it would have without
        buffering, to be finished or answered 503 within the shutdown grace."""
        self._release()
        super().shutdown()
