"""Response and request bodies of every route, so ``/openapi.json`` is exact (CONTRACT.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    """Every error: what went wrong (with what is allowed) and a stable machine-readable type."""

    error: str = Field(description="what was wrong and what is allowed")
    error_type: str = Field(description="stable identifier, e.g. invalid_budget")


class NotReadyBody(ErrorBody):
    """``/readyz`` while not ready: the error shape plus the phase."""

    status: Literal["loading", "warming", "draining", "failed"]


class ModelRef(BaseModel):
    name: str
    version: str


class TopK(BaseModel):
    label: int
    class_name: str
    probability: float


class ClassifyResponse(BaseModel):
    id: str = Field(description="the request id (X-Request-ID), for POST /feedback")
    model: ModelRef
    label: int
    class_name: str
    confidence: float = Field(description="top-1 probability")
    top_k: list[TopK]
    bit_widths: list[int] = Field(
        description="one per switchable layer, in order: the configuration that answered"
    )
    first_pass_bit_widths: list[int] | None = Field(
        default=None,
        description="when the policy's last decision re-ran later layers at another width: "
        "the first pass's widths (bit_widths then hold the prefix it reused and the re-run); "
        "null otherwise",
    )
    bitops: float = Field(description="what this image cost, every pass included, <= budget")
    budget: float = Field(description="the budget that applied")
    policy: Literal["adaptive", "pinned"]
    latency_ms: float


class ClassifyManyResponse(BaseModel):
    """``POST /classify`` with several multipart ``image`` fields: one answer per image."""

    id: str = Field(description="the request id (X-Request-ID)")
    model: ModelRef
    results: list[ClassifyResponse] = Field(
        description="one per image, in the order of the fields; each with its own id for "
        "POST /feedback"
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "warming", "draining", "failed"]
    model: str | None = None


class InputSpecModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]


class LayerModel(BaseModel):
    name: str
    macs: int


class StaticAccuracy(BaseModel):
    model_config = ConfigDict(extra="allow")

    bit_widths: list[int]
    bitops: float
    accuracy: float


class AdaptiveAccuracy(BaseModel):
    model_config = ConfigDict(extra="allow")

    budget: float
    mean_bitops: float
    accuracy: float


class CascadeAccuracy(BaseModel):
    """One operating point of a cascade a user could build from pinned requests."""

    model_config = ConfigDict(extra="allow")

    family: Literal["confidence", "layerwise"]
    dear: list[int] = Field(description="the configuration an unconfident image is re-run at")
    threshold: float = Field(description="re-run when the cheap pass's top-1 probability is below")
    min_budget: float = Field(description="the per-image budget a re-run needs (both passes)")
    mean_bitops: float
    accuracy: float


class OracleAccuracy(BaseModel):
    model_config = ConfigDict(extra="allow")

    configs: int
    mean_bitops: float
    accuracy: float = Field(description="an upper bound: some listed configuration is right")


class BaselineTables(BaseModel):
    confidence_cascade: list[CascadeAccuracy]
    layerwise_cascade: list[CascadeAccuracy]
    oracle: OracleAccuracy


class AccuracyTablesModel(BaseModel):
    static: list[StaticAccuracy]
    adaptive: list[AdaptiveAccuracy]
    baselines: BaselineTables | None = Field(
        default=None,
        description="what a user could build without the policy (thresholds from validation)",
    )


class LatencyRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    bit_widths: list[int]
    bitops: float
    batch_ms: float = Field(description="median time of one pinned batch")
    batch_ms_p90: float
    ms_per_image: float


class LatencyTable(BaseModel):
    """Measured by ``abn evaluate`` on its ``--device``: every uniform width's wall time."""

    model_config = ConfigDict(extra="allow")

    device: str
    device_name: str
    batch_size: int
    torch_threads: int
    repeats: int
    rows: list[LatencyRow]


class ModelCard(BaseModel):
    """``GET /v1/model``."""

    name: str
    version: str
    classes: list[str]
    input: InputSpecModel
    layers: list[LayerModel] = Field(description="the switchable layers, in order")
    bit_candidates: list[int]
    min_bitops: float = Field(description="cheapest configuration, per image")
    max_bitops: float = Field(description="dearest configuration, per image")
    fixed_bitops: float = Field(description="stem + classifier, always 8 x 8 bits")
    accuracy: AccuracyTablesModel = Field(description="measured on the test set")
    latency: LatencyTable | None = Field(
        default=None,
        description="time per uniform width: with ABN_BACKEND=float, where abn evaluate "
        "measured it (quantization is simulated in float32, so every width costs the same time "
        "and BitOps are an accounting unit); with bitserial or mixed, measured on this machine "
        "at start (time falls with BitOps)",
    )
    architecture: str
    policy: Literal["learned", "uniform_fallback"] = Field(
        description="learned: the trained width policy; uniform_fallback: the dearest uniform "
        "width that fits the budget"
    )
    device: str
    backend: Literal["float", "bitserial", "mixed"] = Field(
        description="how the switchable layers compute (ABN_BACKEND, auto resolved): float "
        "simulates quantization, so every width costs the same time; bitserial runs popcount "
        "kernels whose time falls with BitOps; mixed runs each layer's call on whichever of "
        "the two measured faster at start"
    )


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="the id of an earlier /classify")
    label: int = Field(strict=True, description="the true class index")


class FeedbackResponse(BaseModel):
    id: str
    label: int
    predicted_label: int
    outcome: Literal["correct", "incorrect"]


REQUEST_ID_HEADER_DOC: dict[str, Any] = {
    "description": "the request id: the client's X-Request-ID, or one generated",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}
RETRY_AFTER_DOC: dict[str, Any] = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 1},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer, with the headers they carry
    (``X-Request-ID``, on every response of every route, is added by
    :func:`service.app.create_app`)."""
    meaning = {
        400: "the body is not a decodable image (or the multipart has no 'image')",
        401: "ABN_API_KEY is set and the bearer token is missing or wrong",
        404: "unknown or expired request id",
        408: "the body did not arrive within ABN_BODY_TIMEOUT_SECONDS; the connection is closed",
        409: "feedback for this id was already given",
        413: "the body, an image or its pixel count, or the number of images is over the limit",
        415: "unsupported Content-Type",
        422: "invalid header or body (budget, bit-widths, request id, label)",
        429: "the queue is full; see Retry-After",
        500: "the model failed on this image (inference_failed); the server log has the id",
        503: "not ready (Retry-After while loading), shutting down, or overloaded "
        "(ABN_LIMIT_CONCURRENCY)",
        504: "the request waited past its deadline",
    }
    headers: dict[int, dict[str, Any]] = {
        401: {
            "WWW-Authenticate": {
                "description": "the scheme to authenticate with: Bearer",
                "required": True,
                "schema": {"type": "string"},
            }
        },
        429: {"Retry-After": {**RETRY_AFTER_DOC, "required": True}},
        503: {"Retry-After": RETRY_AFTER_DOC},
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": meaning[code]}
        if code in headers:
            entry["headers"] = headers[code]
        out[code] = entry
    return out
