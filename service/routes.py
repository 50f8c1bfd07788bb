"""The HTTP routes of CONTRACT.md. Thin: parse and check, hand the image to the engine, answer.

Checks on ``POST /classify`` run cheapest first, so a bad request costs little: auth (401),
readiness (503), Content-Type (415), headers (422), body size (413), image header and pixel
count (413), decoding (400), queue room (429), deadline (504).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import torch
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.types import Receive

from abn.errors import BudgetError
from abn.preprocess import InputSpec
from service.auth import require_api_key
from service.budget import WidthsError, check_pinned_fits, parse_bit_widths, parse_budget_header
from service.decode import (
    IMAGE_MEDIA_TYPES,
    body_kind,
    convert_image,
    open_image,
    read_image_bytes,
)
from service.engine import Answer
from service.errors import ClientGone, DeadlineExceeded, ServiceError, Unprocessable
from service.logs import ACCESS_KEY
from service.middleware import ARRIVAL_KEY, REQUEST_ID_KEY
from service.schemas import (
    RETRY_AFTER_DOC,
    ClassifyResponse,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    ModelCard,
    ModelRef,
    NotReadyBody,
    Readiness,
    TopK,
    error_responses,
)
from service.state import ServiceState, get_state

router = APIRouter()

TOP_K = 5
# Images up to this many pixels decode on the event loop (well under a millisecond); a thread
# hand-off would cost more than the decode. Larger ones go to a thread.
INLINE_DECODE_PIXELS = 256 * 256

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


def format_number(value: float) -> str:
    """A header value for BitOps: integral values without a fraction, others in full."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e18:
        return str(int(value))
    return repr(float(value))


@router.post(
    "/classify",
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
    response: Response,
    state: ServiceState = Depends(get_state),
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
) -> ClassifyResponse:
    # The typed header parameters document the API; the values are re-read with getlist()
    # so that a header sent twice is refused rather than silently resolved.
    del x_bitops_budget, x_bit_widths, x_request_id
    model, engine = state.serving()
    settings = state.settings
    kind = body_kind(request.headers.get("content-type"))

    budget_values = request.headers.getlist("x-bitops-budget")
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
    pinned: list[int] | None = None
    width_values = request.headers.getlist("x-bit-widths")
    if width_values:
        try:
            pinned = parse_bit_widths(width_values, model.bit_candidates, model.num_layers)
        except WidthsError as err:
            raise Unprocessable(str(err), error_type="invalid_bit_widths") from err
        try:
            check_pinned_fits(pinned, budget, model.table, budget_given=bool(budget_values))
        except BudgetError as err:
            raise Unprocessable(str(err), error_type="bit_widths_over_budget") from err

    loop = asyncio.get_running_loop()
    arrival = request.scope.get(ARRIVAL_KEY, loop.time())
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

    if loop.time() >= deadline:
        raise DeadlineExceeded("the request passed its deadline before it could be queued")
    answer = await _wait(
        request, engine.submit(image, budget, pinned, deadline, request_id), deadline
    )

    probabilities = answer.probabilities
    k = min(TOP_K, probabilities.numel())
    top = probabilities.topk(k)
    top_k = [
        TopK(label=int(i), class_name=model.classes[int(i)], probability=float(p))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    label, confidence = top_k[0].label, top_k[0].probability
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
    state.predictions.remember(request_id, label)
    access["bitops"] = answer.bitops
    response.headers["X-BitOps-Used"] = format_number(answer.bitops)
    response.headers["X-BitOps-Budget"] = format_number(budget)
    return ClassifyResponse(
        id=request_id,
        model=ModelRef(name=model.name, version=model.version),
        label=label,
        class_name=model.classes[label],
        confidence=confidence,
        top_k=top_k,
        bit_widths=answer.widths,
        bitops=answer.bitops,
        budget=budget,
        policy="pinned" if pinned is not None else "adaptive",
        latency_ms=(loop.time() - arrival) * 1000.0,
    )


async def _decode_in_thread(
    opened: Image.Image, spec: InputSpec, max_image_pixels: int, deadline: float
) -> torch.Tensor:
    """:func:`convert_image` in the default thread pool, but no later than the deadline: when
    the pool is saturated, the request is answered 504 rather than left waiting for a thread."""
    remaining = deadline - asyncio.get_running_loop().time()
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
            timeout=max(deadline - loop.time(), 0.0),
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


def _readiness(state: ServiceState) -> JSONResponse | Readiness:
    if state.ready:
        return Readiness(status="ready", model=state.model.name if state.model else None)
    err: ServiceError = state.not_ready_error()
    return JSONResponse(
        {"error": err.message, "error_type": err.error_type, "status": state.phase},
        status_code=503,
        headers=err.headers,
    )


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "model": NotReadyBody,
        "description": "loading, warming, draining, or failed to load",
        "headers": {"Retry-After": RETRY_AFTER_DOC},
    }
}


@router.get("/healthz", response_model=Health, summary="200 while the process runs")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/v2/health/live", response_model=Health, summary="the same as /healthz")
async def live() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=_READY_RESPONSES,
    summary="200 once the model is loaded and warm; 503 before that and while draining",
)
async def readyz(state: ServiceState = Depends(get_state)) -> Any:
    return _readiness(state)


@router.get(
    "/v2/health/ready",
    response_model=Readiness,
    responses=_READY_RESPONSES,
    summary="the same as /readyz",
)
async def ready(state: ServiceState = Depends(get_state)) -> Any:
    return _readiness(state)


@router.get(
    "/metrics",
    summary="Prometheus text format",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(state: ServiceState = Depends(get_state)) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get(
    "/v1/model",
    response_model=ModelCard,
    summary="the model card",
    responses=error_responses(503),
)
async def model_card(state: ServiceState = Depends(get_state)) -> ModelCard:
    return ModelCard.model_validate(state.loaded_model().card())


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    summary="the true label of an earlier request, for live accuracy",
    dependencies=[Depends(require_api_key)],
    responses=error_responses(401, 404, 408, 409, 422, 503),
)
async def feedback(
    body: FeedbackRequest, state: ServiceState = Depends(get_state)
) -> FeedbackResponse:
    model = state.loaded_model()
    n = len(model.classes)
    if not 0 <= body.label < n:
        raise Unprocessable(
            f"label {body.label} is not a class index; allowed: 0 to {n - 1}",
            error_type="invalid_label",
        )
    outcome, predicted = state.predictions.score(body.id, body.label)
    state.metrics.feedback.labels(outcome=outcome).inc()
    return FeedbackResponse(
        id=body.id, label=body.label, predicted_label=predicted, outcome=outcome
    )
