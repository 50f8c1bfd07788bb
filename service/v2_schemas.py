"""Bodies of the Open Inference Protocol (v2) routes, as pydantic models.

They make the OpenAPI document exact, and :class:`InferRequest` also validates the JSON part
of an infer request (one Rust-side parse, with messages that point at the offending field).
Field names and meanings are the protocol's (KServe's and Triton's "predict protocol v2");
``extra="forbid"`` on requests so that a misspelt key is an error, not silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, Parameter]
Dimension = Annotated[StrictInt, Field(ge=0)]


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size (the batch dimension)")


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata] = Field(description="send exactly one of them per request")
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    """``GET /v2/models/{name}/ready`` when ready."""

    name: str
    ready: bool


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="'image' (BYTES) or 'pixels' (UINT8, FP32)")
    shape: list[Dimension]
    datatype: str
    parameters: Parameters | None = Field(
        default=None, description="binary_data_size: the tensor is in the binary part"
    )
    data: list[Any] | None = Field(
        default=None,
        description="row-major, flat or nested; BYTES elements are base64 strings",
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters | None = Field(
        default=None, description="binary_data: true for this output in the binary part"
    )


class InferRequest(BaseModel):
    """The JSON of ``POST /v2/models/{name}/infer`` (with the binary-data extension, the
    body's first ``Inference-Header-Content-Length`` bytes)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    model_name: str | None = Field(
        default=None,
        description="KServe's client repeats the path's model name here; another is a 400",
    )
    parameters: Parameters | None = Field(
        default=None,
        description="budget (BitOps per image: a number, or a string in X-BitOps-Budget's "
        "syntax), bit_widths (X-Bit-Widths' syntax), binary_data_output (bool), timeout "
        "(microseconds)",
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(
        default=None,
        description="label, class_name, probabilities, bit_widths, bitops; absent: all",
    )


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None
    data: list[Any] | None = Field(default=None, description="absent when in the binary part")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    parameters: Parameters = Field(
        description="budget (per image), policy (adaptive or pinned), request_id"
    )
    outputs: list[ResponseOutput]
