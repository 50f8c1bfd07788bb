""":class:`PlainRoute`: a FastAPI route served without FastAPI's per-request machinery.

For the hot paths (``POST /classify``, ``POST /v2/models/{name}/infer``). Such a route is
declared like any other, so the OpenAPI document describes it exactly (headers, bodies,
responses, bearer security), but it is served by calling the endpoint with the bare
:class:`Request`: no dependency is solved, no parameter parsed, no response model validated or
serialised per request. Measured on the 2-core machine, that machinery was 38 % of the event
loop's time per ``/classify`` (issue 19). So the endpoint itself enforces what the declaration
promises, and builds its body from plain values in the declared shape (the schemathesis test
checks every answer against the document).

:class:`HotLane` goes one step further for the parameter-free plain routes (``POST
/classify``): inside the request middleware, it calls their endpoint directly, past Starlette's
exception middleware, FastAPI's exit-stack middleware, the router's match of every route and
the route's own handling (their share of the path: ``scripts/classify_path_cpu.py
--profile``, docs/profiling.md). It answers a :class:`~service.errors.ServiceError` as the
app's handler does; anything else propagates to the request middleware, which answers 500
(as it does for every route).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError, service_error_response


def encode_json(body: Any) -> bytes:
    """A hot route's JSON body as UTF-8, compact: what Starlette's JSONResponse sends, through
    orjson, under a tenth of the standard library encoder's CPU for a ``/classify`` answer
    (``scripts/hot_path_pieces.py``). Its values are finite by then: the engine answers a
    non-finite output 500 before any body is made."""
    return orjson.dumps(body)


class PlainRoute(APIRoute):
    """An API route whose endpoint is called with the :class:`Request` alone and returns a
    :class:`Response`. Its parameters, dependencies and response model document the operation
    in OpenAPI and are never run: the endpoint must enforce them itself."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        call = endpoint

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await call(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app


class HotLane:
    """ASGI middleware: ``(method, path)`` of each parameter-free :class:`PlainRoute` among
    ``routes`` goes straight to its endpoint; every other request to ``app``."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.lanes: dict[tuple[str, str], PlainRoute] = {
            (method, route.path): route
            for route in routes
            if isinstance(route, PlainRoute) and not route.param_convertors
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.lanes.get((scope.get("method", ""), scope.get("path", "")))
        if route is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the router would record (the metrics' route label)
        try:
            response = await route.endpoint(Request(scope, receive, send))
        except ServiceError as err:
            response = service_error_response(err)
        await response(scope, receive, send)


def format_number(value: float) -> str:
    """A header value for BitOps: integral values without a fraction, others in full."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e18:
        return str(int(value))
    return repr(float(value))
