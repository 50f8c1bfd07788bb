""":class:`PlainRoute`: a FastAPI route served without FastAPI's per-request machinery.

For the hot paths (``POST /classify``, ``POST /v2/models/{name}/infer``). Such a route is
declared like any other, so the OpenAPI document describes it exactly (headers, bodies,
responses, bearer security), but it is served by calling the endpoint with the bare
:class:`Request`: no dependency is solved, no parameter parsed, no response model validated or
serialised per request. Measured on the 2-core machine, that machinery was 38 % of the event
loop's time per ``/classify`` (issue 19). So the endpoint itself enforces what the declaration
promises, and builds its body from plain values in the declared shape (the schemathesis test
checks every answer against the document).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

# What Starlette's JSONResponse does, without a response object per call.
encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


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


def format_number(value: float) -> str:
    """A header value for BitOps: integral values without a fraction, others in full."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e18:
        return str(int(value))
    return repr(float(value))
