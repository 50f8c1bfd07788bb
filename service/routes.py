"""The HTTP routes of CONTRACT.md but ``POST /classify`` (the hot path, in
:mod:`service.classify`) and the Open Inference Protocol's model routes (:mod:`service.v2`):
health, readiness (also as the protocol's ``/v2/health/*``), metrics, the model card and
feedback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from service.auth import require_api_key
from service.errors import ServiceError, Unprocessable
from service.schemas import (
    RETRY_AFTER_DOC,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    ModelCard,
    NotReadyBody,
    Readiness,
    error_responses,
)
from service.state import ServiceState, get_state

router = APIRouter()


def readiness(state: ServiceState) -> JSONResponse | None:
    """None when this server is ready (every worker); else its 503, with the phase."""
    if state.all_ready:
        return None
    err: ServiceError = state.not_ready_error()
    phase = "warming" if state.phase == "ready" else state.phase  # others still warming
    return JSONResponse(
        {"error": err.message, "error_type": err.error_type, "status": phase},
        status_code=503,
        headers=err.headers,
    )


def _ready(state: ServiceState) -> JSONResponse | Readiness:
    model = state.model.name if state.model else None
    return readiness(state) or Readiness(status="ready", model=model)


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
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
    responses=READY_RESPONSES,
    summary="200 once the model is loaded and warm; 503 before that and while draining",
)
async def readyz(state: ServiceState = Depends(get_state)) -> Any:
    return _ready(state)


@router.get(
    "/v2/health/ready",
    response_model=Readiness,
    responses=READY_RESPONSES,
    summary="the same as /readyz",
)
async def ready(state: ServiceState = Depends(get_state)) -> Any:
    return _ready(state)


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
