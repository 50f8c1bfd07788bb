"""``POST /classify``, the hot path, served without FastAPI's per-request machinery.

Every other route is an ordinary FastAPI route. This one is declared like them (so the OpenAPI
document describes it exactly: headers, bodies, responses, bearer security) but served by
:class:`PlainRoute`, which calls the endpoint with the bare :class:`Request`: no dependency is
solved, no parameter parsed, no response model validated or serialised per request. Measured on
the 2-core machine, that machinery was 38 % of the event loop's time per request (issue 19).
So the endpoint itself enforces what the declaration promises: the bearer token, readiness, the
headers, and it builds the JSON body from plain values in the shape of
:class:`~service.schemas.ClassifyResponse` (the schemathesis test checks every answer against
the document).

Checks run cheapest first, so a bad request costs little: auth (401), readiness (503),
Content-Type (415), headers (422), body size (413), image header and pixel count (413), decoding
(400), queue room (429), deadline (504).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from fastapi import APIRouter, Depends, Header, Request
from fastapi.routing import APIRoute
from PIL import Image
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from abn.errors import BudgetError
from abn.preprocess import InputSpec
from service.auth import check_api_key, require_api_key
from service.budget import WidthsError, check_pinned_fits, parse_bit_widths, parse_budget_header
from service.decode import IMAGE_MEDIA_TYPES, body_kind, convert_image, open_image, read_image_bytes
from service.engine import Answer
from service.errors import ClientGone, DeadlineExceeded, Unprocessable
from service.logs import ACCESS_KEY
from service.middleware import ARRIVAL_KEY, GENERATED_ID_KEY, REQUEST_ID_KEY
from service.schemas import ClassifyResponse, error_responses
from service.state import ServiceState

CLASSIFY_PATH = "/classify"
# Images up to this many pixels decode on the event loop (well under a millisecond); a thread
# hand-off would cost more than the decode. Larger ones go to a thread.
INLINE_DECODE_PIXELS = 256 * 256
# What Starlette's JSONResponse does, without a response object per call.
_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

_CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image itself, or multipart/form-data with the file in 'image'",
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_MEDIA_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "required": ["image"],
                }
            },
        },
    }
}
_CLASSIFY_HEADERS = {
    name: {"description": text, "required": True, "schema": {"type": "number", "minimum": 0}}
    for name, text in (
        ("X-BitOps-Used", "BitOps this image cost (= bitops)"),
        ("X-BitOps-Budget", "the budget that applied (= budget)"),
    )
}


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


def add_classify_route(router: APIRouter) -> None:
    """Declare ``POST /classify`` on ``router`` (served by :class:`PlainRoute`)."""
    router.add_api_route(
        CLASSIFY_PATH,
        classify,
        methods=["POST"],
        route_class_override=PlainRoute,
        response_model=ClassifyResponse,
        summary="classify one image within a BitOps budget",
        dependencies=[Depends(require_api_key)],
        responses={
            200: {"headers": _CLASSIFY_HEADERS},
            **error_responses(400, 401, 408, 413, 415, 422, 429, 500, 503, 504),
        },
        openapi_extra=_CLASSIFY_BODY,
    )


async def classify(
    request: Request,
    x_bitops_budget: str | None = Header(
        None,
        alias="X-BitOps-Budget",
        description="most BitOps this image may cost: 25000000, 2.5e7, 25M (K, M, G = "
        "1e3, 1e6, 1e9); absent: the server's default budget",
    ),
    x_bit_widths: str | None = Header(
        None,
        alias="X-Bit-Widths",
        description="pin the configuration: one width for all layers (4) or one per layer "
        "(8,4,4,...)",
    ),
    x_request_id: str | None = Header(
        None, alias="X-Request-ID", description="echoed; generated when absent"
    ),
) -> Response:
    # The header parameters document the API (PlainRoute never fills them); the values are
    # read with getlist() so that a header sent twice is refused rather than silently resolved.
    del x_bitops_budget, x_bit_widths, x_request_id
    state: ServiceState = request.app.state.service
    headers = request.headers
    check_api_key(headers.getlist("authorization"), state.settings.api_key)
    model, engine = state.serving()
    settings = state.settings
    kind = body_kind(headers.get("content-type"))
    budget_values = headers.getlist("x-bitops-budget")
    try:
        budget = (
            parse_budget_header(budget_values, model.table)
            if budget_values
            else state.default_budget
        )
    except BudgetError as err:
        raise Unprocessable(str(err), error_type="invalid_budget") from err
    access = request.scope.setdefault(ACCESS_KEY, {})  # what the access line reports
    access["budget"] = budget
    pinned = _pinned(headers.getlist("x-bit-widths"), budget, bool(budget_values), state)

    arrival = request.scope.get(ARRIVAL_KEY, time.monotonic())
    deadline = arrival + settings.request_timeout_seconds
    request_id: str = request.scope[REQUEST_ID_KEY]
    data = await read_image_bytes(request, kind, settings.max_body_bytes)
    opened = open_image(data, settings.max_image_pixels)
    if opened.width * opened.height <= INLINE_DECODE_PIXELS:
        image = convert_image(opened, model.input_spec, settings.max_image_pixels)
    else:  # a large decode would stall every other request: off the event loop
        image = await _decode_in_thread(
            opened, model.input_spec, settings.max_image_pixels, deadline
        )
    del data, opened

    if time.monotonic() >= deadline:
        raise DeadlineExceeded("the request passed its deadline before it could be queued")
    answer = await _wait(
        request, engine.submit(image, budget, pinned, deadline, request_id), deadline
    )
    access["bitops"] = answer.bitops
    latency_ms = (time.monotonic() - arrival) * 1000.0
    return _answer(state, request.scope, request_id, answer, budget, pinned, latency_ms)


def _pinned(
    values: list[str], budget: float, budget_given: bool, state: ServiceState
) -> list[int] | None:
    """The widths ``X-Bit-Widths`` pins, checked against the model and the budget; None when
    the header is absent (the policy decides)."""
    if not values:
        return None
    model = state.loaded_model()
    try:
        pinned = parse_bit_widths(values, model.bit_candidates, model.num_layers)
    except WidthsError as err:
        raise Unprocessable(str(err), error_type="invalid_bit_widths") from err
    try:
        check_pinned_fits(pinned, budget, model.table, budget_given=budget_given)
    except BudgetError as err:
        raise Unprocessable(str(err), error_type="bit_widths_over_budget") from err
    return pinned


def _answer(
    state: ServiceState,
    scope: Scope,
    request_id: str,
    answer: Answer,
    budget: float,
    pinned: list[int] | None,
    latency_ms: float,
) -> Response:
    """Count the answer in the metrics and the feedback memory; the 200 response."""
    model = state.loaded_model()
    classes = model.classes
    label, confidence = answer.top_labels[0], answer.top_probabilities[0]
    state.metrics.classified(
        budget=budget,
        bitops=answer.bitops,
        layer_names=model.layer_names,
        widths=answer.widths,
        confidence=confidence,
        expected_accuracy=model.accuracy.expected(
            pinned=pinned is not None, budget=budget, widths=answer.widths, bitops=answer.bitops
        ),
    )
    if scope.get(GENERATED_ID_KEY):  # ours to shape: it carries its prediction, signed
        request_id = state.predictions.sign(request_id, label)
        scope[REQUEST_ID_KEY] = request_id
    state.predictions.remember(request_id, label)
    body = {
        "id": request_id,
        "model": state.model_ref,
        "label": label,
        "class_name": classes[label],
        "confidence": confidence,
        "top_k": [
            {"label": i, "class_name": classes[i], "probability": p}
            for i, p in zip(answer.top_labels, answer.top_probabilities, strict=True)
        ],
        "bit_widths": answer.widths,
        "first_pass_bit_widths": answer.first_pass_widths,
        "bitops": answer.bitops,
        "budget": budget,
        "policy": "pinned" if pinned is not None else "adaptive",
        "latency_ms": latency_ms,
    }
    return Response(
        _encode_json(body),
        media_type="application/json",
        headers={
            "X-BitOps-Used": format_number(answer.bitops),
            "X-BitOps-Budget": format_number(budget),
        },
    )


async def _decode_in_thread(
    opened: Image.Image, spec: InputSpec, max_image_pixels: int, deadline: float
) -> torch.Tensor:
    """:func:`convert_image` in the default thread pool, but no later than the deadline: when
    the pool is saturated, the request is answered 504 rather than left waiting for a thread."""
    remaining = deadline - time.monotonic()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(convert_image, opened, spec, max_image_pixels),
            max(remaining, 0.0),
        )
    except TimeoutError:
        raise DeadlineExceeded(
            "the request passed its deadline (ABN_REQUEST_TIMEOUT_SECONDS) waiting for a "
            "decoder thread"
        ) from None


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone. Called after the body has been read, when the next
    ASGI message can only be ``http.disconnect`` (uvicorn sends it when the socket closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _wait(request: Request, future: asyncio.Future[Answer], deadline: float) -> Answer:
    """The engine's answer; 504 at the deadline; :class:`ClientGone` (499) when the client
    closes its connection first. In the last two cases the job's future is cancelled, so the
    batcher drops the job before it reaches the model if it is still queued."""
    loop = asyncio.get_running_loop()
    watcher = loop.create_task(_disconnected(request.receive), name="abn-disconnect-watch")
    try:
        done, _ = await asyncio.wait(
            (future, watcher),
            timeout=max(deadline - time.monotonic(), 0.0),
            return_when=asyncio.FIRST_COMPLETED,
        )
    except asyncio.CancelledError:
        future.cancel()  # the request task itself was cancelled: let the batcher skip it
        raise
    finally:
        watcher.cancel()
    if future.done() and not future.cancelled():
        return future.result()  # the answer (or the engine's error) came first, or at once
    future.cancel()
    if watcher in done:
        raise ClientGone("while its request waited for the model; the work was dropped")
    raise DeadlineExceeded(
        "the request waited past its deadline (ABN_REQUEST_TIMEOUT_SECONDS) for the model"
    )
