"""``POST /classify``, the hot path: one image, or several multipart ``image`` fields.

Served by :class:`~service.plain_route.PlainRoute` (no per-request dependency solving, issue
19), so the endpoint enforces what its declaration promises. It is a short sequence of the
steps every classifying route shares: the bearer token (:mod:`service.auth`), readiness, the
cost request from the headers (:mod:`service.cost`), the body to image tensors
(:mod:`service.decode`, :mod:`service.images`), one engine job per image and the wait
(:mod:`service.jobs`), and :func:`to_response`.

Checks run cheapest first, so a bad request costs little: auth (401), readiness (503),
Content-Type (415), headers (422), body size (413), image header and pixel count (413), decoding
(400), queue room (429), deadline (504).
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response
from starlette.types import Scope

from service.auth import check_api_key, require_api_key
from service.cost import CostRequest, cost_request
from service.decode import IMAGE_FIELD, IMAGE_MEDIA_TYPES, body_kind, read_images
from service.engine import Answer
from service.images import decode_images
from service.jobs import count_answers, feedback_ids, max_images, submit_all, wait_all
from service.logs import ACCESS_KEY
from service.middleware import ARRIVAL_KEY, GENERATED_ID_KEY, REQUEST_ID_KEY
from service.plain_route import PlainRoute, encode_json, format_number
from service.schemas import ClassifyManyResponse, ClassifyResponse, error_responses
from service.state import ServiceState

CLASSIFY_PATH = "/classify"

_CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image itself, or multipart/form-data with the file in 'image' "
        "(several 'image' fields: several images, answered as a list)",
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_MEDIA_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        IMAGE_FIELD: {
                            "oneOf": [
                                {"type": "string", "format": "binary"},
                                {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                    "minItems": 1,
                                },
                            ]
                        }
                    },
                    "required": [IMAGE_FIELD],
                }
            },
        },
    }
}
_CLASSIFY_HEADERS = {
    name: {"description": text, "required": True, "schema": {"type": "number", "minimum": 0}}
    for name, text in (
        ("X-BitOps-Used", "BitOps the image cost (= bitops); for several, their sum"),
        ("X-BitOps-Budget", "the budget that applied to each image (= budget)"),
    )
}


def add_classify_route(router: APIRouter) -> None:
    """Declare ``POST /classify`` on ``router`` (served by :class:`PlainRoute`)."""
    router.add_api_route(
        CLASSIFY_PATH,
        classify,
        methods=["POST"],
        route_class_override=PlainRoute,
        response_model=ClassifyResponse | ClassifyManyResponse,
        summary="classify one image, or several, each within a BitOps budget",
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
        description="most BitOps each image may cost: 25000000, 2.5e7, 25M (K, M, G = "
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
    cost = cost_request(
        headers.getlist("x-bitops-budget"),
        headers.getlist("x-bit-widths"),
        model,
        state.default_budget,
    )
    access = request.scope.setdefault(ACCESS_KEY, {})  # what the access line reports
    access["budget"] = cost.budget

    arrival = request.scope.get(ARRIVAL_KEY, time.monotonic())
    deadline = arrival + settings.request_timeout_seconds
    encoded = await read_images(request, kind, settings.max_body_bytes, max_images(settings))
    images = await decode_images(encoded, model.input_spec, settings.max_image_pixels, deadline)
    del encoded
    request_id: str = request.scope[REQUEST_ID_KEY]
    futures = submit_all(engine, images, cost, deadline, request_id)
    answers = await wait_all(request, futures, deadline)
    access["bitops"] = math.fsum(answer.bitops for answer in answers)
    latency_ms = (time.monotonic() - arrival) * 1000.0
    return to_response(state, request.scope, answers, cost, latency_ms)


def to_response(
    state: ServiceState,
    scope: Scope,
    answers: list[Answer],
    cost: CostRequest,
    latency_ms: float,
) -> Response:
    """Count the answers in the metrics and the feedback memory; the 200 response: one
    image's object, or for several ``{"id", "model", "results": [one object per image]}``."""
    count_answers(state, answers, cost)
    request_id: str = scope[REQUEST_ID_KEY]
    several = len(answers) > 1
    ids = feedback_ids(
        state, request_id, bool(scope.get(GENERATED_ID_KEY)), answers, one=not several
    )
    results = [
        _image_body(state, image_id, answer, cost, latency_ms)
        for image_id, answer in zip(ids, answers, strict=True)
    ]
    if several:
        body: dict[str, Any] = {"id": request_id, "model": state.model_ref, "results": results}
    else:
        body = results[0]
        scope[REQUEST_ID_KEY] = body["id"]  # the response header carries the signed id
    return Response(
        encode_json(body),
        media_type="application/json",
        headers={
            "X-BitOps-Used": format_number(math.fsum(answer.bitops for answer in answers)),
            "X-BitOps-Budget": format_number(cost.budget),
        },
    )


def _image_body(
    state: ServiceState, image_id: str, answer: Answer, cost: CostRequest, latency_ms: float
) -> dict[str, Any]:
    """One image's answer in the shape of :class:`~service.schemas.ClassifyResponse`."""
    classes = state.loaded_model().classes
    label = answer.top_labels[0]
    return {
        "id": image_id,
        "model": state.model_ref,
        "label": label,
        "class_name": classes[label],
        "confidence": answer.top_probabilities[0],
        "top_k": [
            {"label": i, "class_name": classes[i], "probability": p}
            for i, p in zip(answer.top_labels, answer.top_probabilities, strict=True)
        ],
        "bit_widths": answer.widths,
        "first_pass_bit_widths": answer.first_pass_widths,
        "bitops": answer.bitops,
        "budget": cost.budget,
        "policy": cost.policy,
        "latency_ms": latency_ms,
    }
