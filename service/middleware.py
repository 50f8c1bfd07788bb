"""Per-request context: the request id, the arrival time, and the request metrics.

A plain ASGI middleware (not ``BaseHTTPMiddleware``) so it adds no task or body copy per
request. It sees every response, errors included, which is what makes ``X-Request-ID`` and
``abn_requests_total`` cover every request. It is also the last line of defence: an exception
that escapes the app is answered here as a JSON 500 in the contract's error shape, and a request
cancelled by the server at the end of the shutdown grace as a JSON 503.
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

log = logging.getLogger("service")

REQUEST_ID_KEY = "abn.request_id"
ARRIVAL_KEY = "abn.arrival"  # event-loop time the request arrived
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
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = frozenset(known_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = time.perf_counter()
        scope[ARRIVAL_KEY] = asyncio.get_running_loop().time()
        given = Headers(scope=scope).getlist(REQUEST_ID_HEADER)
        valid = len(given) == 0 or (
            len(given) == 1 and _REQUEST_ID_RE.fullmatch(given[0]) is not None
        )
        request_id = given[0] if given and valid else uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = request_id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
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
            else:
                await self.app(scope, receive, send_with_id)
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
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_error(
                    send_with_id, 500, "internal_error", "internal error; see the server log"
                )
        finally:
            route = route_label(scope, self.known_paths)
            self.metrics().request_done(route, status, time.perf_counter() - clock)


async def _send_error(send: Send, status: int, error_type: str, message: str) -> None:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
