"""Per-request context: the request id, the arrival time, and the request metrics.

A plain ASGI middleware (not ``BaseHTTPMiddleware``) so it adds no task or body copy per
request. It sees every response, errors included, which is what makes ``X-Request-ID`` and
``abn_requests_total`` cover every request. It is also the last line of defence: an exception
that escapes the app is answered here as a JSON 500 in the contract's error shape, and a request
cancelled by the server at the end of the shutdown grace as a JSON 503.

It also enforces what the network may do to a request:

* **the body's deadline**: every ``receive()`` until the body is complete runs under
  ``asyncio.timeout_at(arrival + ABN_BODY_TIMEOUT_SECONDS)`` (a timer, no extra task); at the
  deadline the route's read raises :class:`BodyTimeout`, answered 408;
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

from service.connections import OVERLOADED_KEY
from service.errors import CLIENT_CLOSED_REQUEST, BodyTimeout, ClientGone
from service.logs import ACCESS_KEY, MAX_LOGGED_PATH, access_line, request_id_var
from service.metrics import ServiceMetrics

log = logging.getLogger("service")

REQUEST_ID_KEY = "abn.request_id"  # the id; a route may replace a generated one (signed)
GENERATED_ID_KEY = "abn.request_id_generated"  # True when the client sent no X-Request-ID
ARRIVAL_KEY = "abn.arrival"  # time.monotonic() when the request arrived
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
        arrival = time.monotonic()  # the request clock (see service.engine)
        scope[ARRIVAL_KEY] = arrival
        given = Headers(scope=scope).getlist(REQUEST_ID_HEADER)
        valid = len(given) == 0 or (
            len(given) == 1 and _REQUEST_ID_RE.fullmatch(given[0]) is not None
        )
        request_id = given[0] if given and valid else uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = request_id
        scope[GENERATED_ID_KEY] = not given
        scope[ACCESS_KEY] = {}
        id_token = request_id_var.set(request_id)
        status = 500
        started = False
        body_done = False
        body_deadline = arrival + self.body_timeout

        async def receive_in_time() -> Message:
            nonlocal body_done
            if body_done:  # after the body: waits for a disconnect, with no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                log.info(
                    "request %s: %s %s: the body did not arrive within %gs; 408, connection closed",
                    request_id,
                    scope.get("method"),
                    _loggable_path(scope),
                    self.body_timeout,
                )
                raise BodyTimeout(
                    f"the request body did not fully arrive within {self.body_timeout:g}s "
                    f"(ABN_BODY_TIMEOUT_SECONDS); the connection is closed"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                final_id = scope[REQUEST_ID_KEY]  # the route may have signed it
                headers.append((b"x-request-id", final_id.encode("latin-1")))
                request_id_var.set(final_id)  # the access line carries what the client sees
                if not body_done and _has_body(scope) and not _names_connection(headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if not valid:
                status = 422
                await _send_error(
                    send_with_id,
                    422,
                    "invalid_request_id",
                    f"{REQUEST_ID_HEADER} must be given once, 1 to {MAX_REQUEST_ID} visible "
                    f"ASCII characters (no spaces); omit it to have one generated",
                )
            elif scope.get(OVERLOADED_KEY):
                status = 503
                await _send_error(
                    send_with_id,
                    503,
                    "overloaded",
                    "too many connections or requests in flight (ABN_LIMIT_CONCURRENCY); "
                    "retry shortly",
                    [(b"retry-after", b"1"), (b"connection", b"close")],
                )
            else:
                await self.app(scope, receive_in_time, send_with_id)
        except ClientDisconnect as gone:
            # The client closed its connection: nothing can be answered and nothing failed.
            status = CLIENT_CLOSED_REQUEST
            where = gone.message if isinstance(gone, ClientGone) else "during the upload"
            log.info(
                "request %s: %s %s: the client disconnected %s (499)",
                request_id,
                scope.get("method"),
                _loggable_path(scope),
                where,
            )
        except asyncio.CancelledError:
            # uvicorn cancels the requests still open when the shutdown grace runs out and
            # would answer them with a plain-text 500: answer in the contract's shape instead.
            if not started:
                status = 503
                with contextlib.suppress(Exception):
                    await _send_error(
                        send_with_id,
                        503,
                        "shutting_down",
                        "the server shut down before this request finished; retry on another "
                        "instance",
                    )
            raise
        except BodyTimeout as late:  # raised where no exception handler answered it
            if not started:
                status = 408
                await _send_error(send_with_id, 408, late.error_type, late.message)
        except Exception:
            log.exception(
                "request %s: unhandled error in %s %s",
                request_id,
                scope.get("method"),
                _loggable_path(scope),
            )
            if not started:
                await _send_error(
                    send_with_id, 500, "internal_error", "internal error; see the server log"
                )
        finally:
            seconds = time.perf_counter() - clock
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
            request_id_var.reset(id_token)


def _loggable_path(scope: Scope) -> str:
    """The request path for a text log line: the client's (percent-decoded, so it may hold a
    newline that would forge a line), hence escaped to printable ASCII and bounded."""
    path = str(scope.get("path", ""))[:MAX_LOGGED_PATH]
    return path.encode("unicode_escape").decode("ascii")


def _names_connection(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" for name, _ in headers)


def _has_body(scope: Scope) -> bool:
    """Whether the request declares a body (a non-zero Content-Length, or chunked)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


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
