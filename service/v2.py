"""The Open Inference Protocol (v2, KServe's and Triton's HTTP/REST protocol) beside the API.

So that tritonclient, KServe's clients and anything else that speaks the protocol can use the
service: ``GET /v2`` (server metadata), ``GET /v2/models/{name}`` (model metadata),
``GET /v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``; ``/v2/health/live`` and
``/v2/health/ready`` are in :mod:`service.routes`, beside ``/healthz`` and ``/readyz``.

The infer route is a second way into the same path as ``POST /classify``, with the same
guarantees: a :class:`~service.plain_route.PlainRoute` (no per-request dependency solving), the
bearer token, readiness, the cost request of :mod:`service.cost` (from the request's
``budget`` and ``bit_widths`` parameters; 422 as on ``/classify``), the images decoded by
:mod:`service.images`, one engine job per image (:mod:`service.jobs`: 429 and 503 with
Retry-After, the deadline, 499), the metrics per image. What differs is only the envelope:
:mod:`service.v2_tensors` turns the request's tensor into images and the answers into output
tensors. Errors keep the service's body, whose ``error`` is the protocol's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Request
from pydantic import ValidationError
from starlette.responses import Response

from service.auth import check_api_key, require_api_key
from service.cost import CostNames, CostRequest, cost_request
from service.decode import read_body
from service.engine import Answer
from service.errors import NotFound, UnsupportedMediaType
from service.images import decode_images
from service.jobs import count_answers, feedback_ids, max_images, submit_all, wait_all
from service.logs import ACCESS_KEY
from service.middleware import ARRIVAL_KEY, GENERATED_ID_KEY, REQUEST_ID_KEY
from service.model import ServedModel
from service.plain_route import PlainRoute, encode_json
from service.routes import READY_RESPONSES, readiness
from service.schemas import error_responses
from service.state import ServiceState, get_state
from service.v2_schemas import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
)
from service.v2_tensors import (
    Answered,
    BadTensor,
    encode_outputs,
    input_metadata,
    output_metadata,
    read_input,
    requested_outputs,
    split_body,
)

SERVER_NAME = "abn-serve"
SERVER_VERSION = version("abn-serve")  # the installed distribution: the server software
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "pytorch_abn"  # what runs the model: a PyTorch supernet with a width policy
HEADER_LENGTH = "Inference-Header-Content-Length"
INFER_MEDIA_TYPES = ("application/json", "application/octet-stream")
PARAMETERS = CostNames(budget="parameter 'budget'", widths="parameter 'bit_widths'")
REQUEST_PARAMETERS = ("budget", "bit_widths", "binary_data_output", "timeout")

router = APIRouter()

# maxLength is the document's alone (never checked: any other name is simply not the model's,
# 404); it tells a client generator, and schemathesis' negative run, what a name cannot be.
_NAME = Path(
    description="the model's name (GET /v2/models/{name}); one model is served",
    json_schema_extra={"maxLength": 256},
)
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "binary-data extension: the JSON request (its length in "
                    "Inference-Header-Content-Length), then each binary input's bytes",
                }
            }
        },
    }
}
_INFER_200: dict[str, Any] = {
    "description": "JSON, or with binary outputs the JSON response followed by their bytes",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {
        HEADER_LENGTH: {
            "description": "with binary outputs: the length of the JSON part",
            "schema": {"type": "integer", "minimum": 0},
        },
    },
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """:func:`error_responses`, with what 400 and 404 mean on these routes."""
    out = error_responses(*codes)
    meaning = {
        400: "the inference request is not well formed (JSON, tensors, parameters), or an "
        "image is not decodable",
        404: "no model of that name",
    }
    for code, text in meaning.items():
        if code in out:
            out[code]["description"] = text
    return out


@router.get("/v2", response_model=ServerMetadata, summary="server metadata (v2)")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)


@router.get(
    "/v2/models/{name}",
    response_model=ModelMetadata,
    summary="model metadata (v2): its inputs and outputs",
    responses=_errors(404, 503),
)
async def model_metadata(
    name: str = _NAME, state: ServiceState = Depends(get_state)
) -> ModelMetadata:
    model = _named(state.loaded_model(), name)
    return ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform=PLATFORM,
        inputs=input_metadata(model.input_spec),
        outputs=output_metadata(len(model.classes), model.num_layers),
    )


@router.get(
    "/v2/models/{name}/ready",
    response_model=ModelReady,
    summary="200 once the model is ready (v2); 503 before that and while draining",
    responses={**READY_RESPONSES, **_errors(404)},
)
async def model_ready(name: str = _NAME, state: ServiceState = Depends(get_state)) -> Any:
    not_ready = readiness(state)  # first: before the model is loaded its name is not known
    if not_ready is not None:
        return not_ready
    model = _named(state.loaded_model(), name)
    return ModelReady(name=model.name, ready=True)


def add_infer_route(router: APIRouter) -> None:
    """Declare ``POST /v2/models/{name}/infer`` on ``router`` (served by PlainRoute)."""
    router.add_api_route(
        "/v2/models/{name}/infer",
        infer,
        methods=["POST"],
        route_class_override=PlainRoute,
        response_model=InferResponse,
        summary="classify a batch of images (v2): each within the budget parameter",
        dependencies=[Depends(require_api_key)],
        responses={
            200: _INFER_200,
            **_errors(400, 401, 404, 408, 413, 415, 422, 429, 500, 503, 504),
        },
        openapi_extra=_INFER_BODY,
    )


async def infer(
    request: Request,
    name: str = _NAME,
    body: InferRequest = Body(None, media_type="application/json"),
) -> Response:
    # name and body document the operation (PlainRoute fills neither): read from the request.
    del name, body
    state: ServiceState = request.app.state.service
    check_api_key(request.headers.getlist("authorization"), state.settings.api_key)
    model, engine = state.serving()
    _named(model, request.path_params["name"])
    settings = state.settings
    _check_media_type(request)
    raw = await read_body(request, settings.max_body_bytes)
    header, binary = split_body(raw, request.headers.getlist(HEADER_LENGTH))
    parsed = _parse(header)
    asked = _asked(parsed, model, state.default_budget)
    cost = asked.cost
    access = request.scope.setdefault(ACCESS_KEY, {})  # what the access line reports
    access["budget"] = cost.budget
    arrival = request.scope.get(ARRIVAL_KEY, time.monotonic())
    deadline = arrival + min(settings.request_timeout_seconds, asked.timeout_seconds)
    tensor = read_input(parsed, binary, model.input_spec, max_images(settings))
    del raw, header, binary
    images = (
        tensor.unbind(0)
        if not isinstance(tensor, list)
        else await decode_images(tensor, model.input_spec, settings.max_image_pixels, deadline)
    )
    request_id: str = request.scope[REQUEST_ID_KEY]
    answers = await wait_all(
        request, submit_all(engine, images, cost, deadline, request_id), deadline
    )
    access["bitops"] = math.fsum(answer.bitops for answer in answers)
    return _response(request, state, parsed.id or request_id, answers, asked)


def _response(
    request: Request, state: ServiceState, response_id: str, answers: list[Answer], asked: _Asked
) -> Response:
    """Count and remember the answers; the v2 response, JSON or JSON plus binary outputs."""
    count_answers(state, answers, asked.cost)
    request_id: str = request.scope[REQUEST_ID_KEY]
    generated = bool(request.scope.get(GENERATED_ID_KEY))
    ids = feedback_ids(state, request_id, generated, answers, one=False)
    model = state.loaded_model()
    entries, binary = encode_outputs(Answered(answers, model.classes, ids), asked.outputs)
    body = {
        "model_name": model.name,
        "model_version": model.version,
        "id": response_id,
        "parameters": {
            "budget": asked.cost.budget,
            "policy": asked.cost.policy,
            "request_id": request_id,
        },
        "outputs": entries,
    }
    encoded = encode_json(body)
    if not binary:
        return Response(encoded, media_type="application/json")
    return Response(
        encoded + binary,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(encoded))},
    )


def _named(model: ServedModel, name: str) -> ServedModel:
    if name != model.name:
        raise NotFound(
            f"no model {ascii(name[:80])}; this server serves '{model.name}' "
            f"(GET /v2/models/{model.name})"
        )
    return model


def _check_media_type(request: Request) -> None:
    """415 unless the body is JSON or the binary-data extension (or says nothing), and is
    not compressed."""
    content_type = request.headers.get("content-type")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if content_type is not None and media not in INFER_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {ascii(media[:60])} is not supported; send application/json, or "
            f"application/octet-stream with {HEADER_LENGTH} (the binary-data extension)"
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {ascii(encoding[:40])} is not supported; send the body uncompressed"
        )


def _parse(header: bytes) -> InferRequest:
    """The JSON request, validated; 400 naming what is wrong (the protocol's status)."""
    try:
        return InferRequest.model_validate_json(header)
    except ValidationError as err:
        parts = []
        for problem in err.errors(include_url=False)[:5]:
            where = ".".join(str(p) for p in problem.get("loc", ())) or "request"
            parts.append(f"{where}: {problem.get('msg', 'invalid')}")
        raise BadTensor("the inference request is not valid: " + "; ".join(parts)) from None


@dataclass(frozen=True, slots=True)
class _Asked:
    """What an infer request asks besides its input: the cost, the outputs, its deadline."""

    cost: CostRequest
    outputs: list[tuple[str, bool]]  # (name, binary)
    timeout_seconds: float  # inf: the server's deadline alone


def _asked(parsed: InferRequest, model: ServedModel, default_budget: float) -> _Asked:
    if parsed.model_name not in (None, model.name):
        raise BadTensor(
            f"the request's model_name {ascii(parsed.model_name[:80])} is not the model of "
            f"its path, '{model.name}'"
        )
    parameters = parsed.parameters or {}
    _check_parameters(parameters)
    return _Asked(
        cost=_cost(parameters, model, default_budget),
        outputs=requested_outputs(parsed, _flag(parameters, "binary_data_output")),
        timeout_seconds=_timeout_seconds(parameters),
    )


def _check_parameters(parameters: dict[str, Any]) -> None:
    unknown = sorted(set(parameters) - set(REQUEST_PARAMETERS))
    if unknown:
        raise BadTensor(
            f"request parameter {ascii(unknown[0][:40])} is not supported; the parameters "
            f"are {', '.join(REQUEST_PARAMETERS)}"
        )


def _cost(parameters: dict[str, Any], model: ServedModel, default_budget: float) -> CostRequest:
    """The cost request from the ``budget`` and ``bit_widths`` parameters: a number or a
    string in the headers' syntax each (any other value is refused by their parsers)."""
    values = [
        [] if key not in parameters else [_text(parameters[key])]
        for key in ("budget", "bit_widths")
    ]
    return cost_request(values[0], values[1], model, default_budget, PARAMETERS)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _flag(parameters: dict[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadTensor(f"request parameter {key} must be true or false")
    return value


def _timeout_seconds(parameters: dict[str, Any]) -> float:
    """The ``timeout`` parameter (microseconds, as tritonclient sends it): a deadline shorter
    than the server's; absent: no change."""
    value = parameters.get("timeout")
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadTensor("request parameter timeout must be a positive integer (microseconds)")
    return value / 1e6
