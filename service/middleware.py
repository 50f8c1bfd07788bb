"""Per-request context: the request id, the arrival time, and the request metrics.

A plain ASGI middleware (not ``BaseHTTPMiddleware``) so it adds no task or body copy per
request. It sees every response, errors included, which is what makes ``X-Request-ID`` and
``abn_requests_total`` cover every request. It is also the last line of defence: an exception
that escapes the app is answered here as a JSON 500 in the contract's error shape, and a request
cancelled by the server at the end of the shutdown grace as a JSON 503.

It also enforces what the network may do to a request:

* **the body's deadline** (:func:`service.connections.body_deadline`): a request the protocol
  held until its deadline without its body is answered 408 at once; one whose body streams
  to the app reads it under ``asyncio.timeout_at(deadline)`` (a timer, no extra task), and at
  the deadline the route's read raises :class:`BodyTimeout`, answered 408;
* **no connection outlives an unread body**: a response that starts before its request's body
  has fully arrived (408, 413, 415, 401, ...) carries ``Connection: close``, so uvicorn closes
  the connection instead of reading, and discarding, whatever the client still trickles;
* **client disconnects are the client's**: ``ClientDisconnect`` (left during the upload) and
  :class:`ClientGone` (left while queued) are counted with status 499 and logged at INFO in
  one line, never as a 500 with a traceback;
* **overload**: a request that :mod:`service.connections` marked over the concurrency cap is
  answered 503 (``overloaded``) here, without running a route.

And it writes the request's access line (:func:`service.logs.access_line`) once the response
is done, and sets :data:`service.logs.request_id_var` for the request's task, so every line
the request causes carries its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.connections import (
    ARRIVAL_KEY,
    BODY_COMPLETE_KEY,
    BODY_DEADLINE_KEY,
    BODY_LATE_KEY,
    OVERLOADED_KEY,
    body_deadline,
    declares_body,
)
from service.errors import CLIENT_CLOSED_REQUEST, BodyTimeout, ClientGone
from service.logs import ACCESS_KEY, MAX_LOGGED_PATH, access_line, request_id_var
from service.metrics import ServiceMetrics

log = logging.getLogger("service")

REQUEST_ID_KEY = "abn.request_id"  # the id; a route may replace a generated one (signed)
GENERATED_ID_KEY = "abn.request_id_generated"  # True when the client sent no X-Request-ID
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 128
_REQUEST_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")


def route_label(scope: Scope, known_paths: frozenset[str] = frozenset()) -> str:
    """The route template (``/classify``), never the raw path, to bound label cardinality.

    The router records the route it chose; a request answered before routing (a bad
    X-Request-ID) is labelled by its path when that is one of the app's (parameter-free)
    routes."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    raw = scope.get("path")
    return raw if raw in known_paths else "unmatched"


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Callable[[], ServiceMetrics],
        known_paths: Iterable[str] = (),
        body_timeout_seconds: float = 5.0,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = frozenset(known_paths)
        self.body_timeout = body_timeout_seconds
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = time.perf_counter()
        valid = _identify(scope)
        exchange = _Exchange(scope, receive, send, self.body_timeout)
        id_token = request_id_var.set(exchange.request_id)
        try:
            await self._dispatch(exchange, valid)
        except ClientDisconnect as gone:
            # The client closed its connection: nothing can be answered and nothing failed.
            exchange.status = CLIENT_CLOSED_REQUEST
            where = gone.message if isinstance(gone, ClientGone) else "during the upload"
            exchange.log_info("the client disconnected %s (499)", where)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still open when the shutdown grace runs out and
            # would answer them with a plain-text 500: answer in the contract's shape instead.
            if not exchange.started:
                with contextlib.suppress(Exception):
                    await exchange.answer_error(
                        503,
                        "shutting_down",
                        "the server shut down before this request finished; retry on another "
                        "instance",
                    )
            raise
        except BodyTimeout as late:  # raised where no exception handler answered it
            if not exchange.started:
                await exchange.answer_error(408, late.error_type, late.message)
        except Exception:
            log.exception(
                "request %s: unhandled error in %s %s",
                exchange.request_id,
                scope.get("method"),
                _loggable_path(scope),
            )
            if not exchange.started:
                await exchange.answer_error(
                    500, "internal_error", "internal error; see the server log"
                )
        finally:
            self._record(scope, exchange.status, time.perf_counter() - clock)
            request_id_var.reset(id_token)

    async def _dispatch(self, exchange: _Exchange, valid_id: bool) -> None:
        """The app, unless the request is answered here: a bad X-Request-ID (422), or over
        the concurrency cap (503)."""
        if not valid_id:
            await exchange.answer_error(
                422,
                "invalid_request_id",
                f"{REQUEST_ID_HEADER} must be given once, 1 to {MAX_REQUEST_ID} visible "
                f"ASCII characters (no spaces); omit it to have one generated",
            )
        elif exchange.scope.get(BODY_LATE_KEY):
            late = exchange.body_timeout_error()
            await exchange.answer_error(408, late.error_type, late.message)
        elif exchange.scope.get(OVERLOADED_KEY):
            await exchange.answer_error(
                503,
                "overloaded",
                "too many connections or requests in flight (ABN_LIMIT_CONCURRENCY); retry shortly",
                [(b"retry-after", b"1"), (b"connection", b"close")],
            )
        else:
            await self.app(exchange.scope, exchange.receive, exchange.send)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        """The request's metrics and its access line, once its response is done."""
        route = route_label(scope, self.known_paths)
        self.metrics().request_done(route, status, seconds)
        if self.access_log:
            recorded = scope.get(ACCESS_KEY, {})
            access_line(
                method=str(scope.get("method", "")),
                route=route,
                path=str(scope.get("path", "")),
                status=status,
                latency_ms=seconds * 1000.0,
                budget=recorded.get("budget"),
                bitops=recorded.get("bitops"),
            )


def _identify(scope: Scope) -> bool:
    """Give the request its id (the client's valid X-Request-ID, else a fresh one), its
    arrival time (the request clock, see service.engine) and an empty access record; whether
    the client's X-Request-ID, if any, was valid."""
    scope.setdefault(ARRIVAL_KEY, time.monotonic())  # the protocol's, when served by uvicorn
    given = Headers(scope=scope).getlist(REQUEST_ID_HEADER)
    valid = len(given) == 0 or (len(given) == 1 and _REQUEST_ID_RE.fullmatch(given[0]) is not None)
    scope[REQUEST_ID_KEY] = given[0] if given and valid else uuid.uuid4().hex
    scope[GENERATED_ID_KEY] = not given
    scope[ACCESS_KEY] = {}
    return valid


class _Exchange:
    """One request's passage through the middleware: the ``receive`` and ``send`` the app is
    given, the status it was answered with, whether its response has started, and whether its
    body has fully arrived (every read before that runs under the body's deadline)."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, body_timeout: float) -> None:
        self.scope = scope
        self.request_id: str = scope[REQUEST_ID_KEY]
        self._receive, self._send = receive, send
        self.body_timeout = body_timeout
        self.body_deadline: float = scope.get(BODY_DEADLINE_KEY) or body_deadline(
            scope[ARRIVAL_KEY], body_timeout
        )
        self.status = 500
        self.started = False
        self.body_done = False

    def log_info(self, what: str, *args: object) -> None:
        scope = self.scope
        log.info(
            "request %s: %s %s: " + what,
            self.request_id,
            scope.get("method"),
            _loggable_path(scope),
            *args,
        )

    async def receive(self) -> Message:
        if self.body_done:  # after the body: waits for a disconnect, with no deadline
            return await self._receive()
        if self.scope.get(BODY_COMPLETE_KEY):  # all here already (buffered): no timer to arm
            message = await self._receive()
        else:
            try:
                async with asyncio.timeout_at(self.body_deadline):
                    message = await self._receive()
            except TimeoutError:
                raise self.body_timeout_error() from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    def body_timeout_error(self) -> BodyTimeout:
        """The 408 for a body that did not arrive by its deadline, logged at INFO."""
        self.log_info(
            "the body did not arrive within %gs; 408, connection closed", self.body_timeout
        )
        return BodyTimeout(
            f"the request body did not fully arrive within {self.body_timeout:g}s "
            f"(ABN_BODY_TIMEOUT_SECONDS); the connection is closed"
        )

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = list(message.get("headers", []))
            final_id = self.scope[REQUEST_ID_KEY]  # the route may have signed it
            headers.append((b"x-request-id", final_id.encode("latin-1")))
            request_id_var.set(final_id)  # the access line carries what the client sees
            if not self.body_done and declares_body(self.scope) and not _names_connection(headers):
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await self._send(message)

    async def answer_error(
        self,
        status: int,
        error_type: str,
        message: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer in the contract's error shape; the status counts even if sending fails."""
        self.status = status
        await _send_error(self.send, status, error_type, message, extra_headers)


def _loggable_path(scope: Scope) -> str:
    """The request path for a text log line: the client's (percent-decoded, so it may hold a
    newline that would forge a line), hence escaped to printable ASCII and bounded."""
    path = str(scope.get("path", ""))[:MAX_LOGGED_PATH]
    return path.encode("unicode_escape").decode("ascii")


def _names_connection(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" for name, _ in headers)


async def _send_error(
    send: Send,
    status: int,
    error_type: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra_headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
