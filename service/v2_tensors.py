"""Tensors of the Open Inference Protocol (v2): a request's input to images, answers to outputs.

Two ways in, one input per request:

* ``image``, BYTES, shape ``[N]`` or ``[N, 1]``: N encoded images (PNG, JPEG, WebP, BMP, GIF),
  decoded and converted as ``POST /classify`` does. In JSON each element is the image in
  base64 (JSON strings cannot hold raw bytes); in the binary part, the protocol's BYTES
  serialisation (each element a 4-byte little-endian length, then its bytes).
* ``pixels``, shape ``[N, C, H, W]`` of the model's input: UINT8 values 0-255, or FP32 values
  0-1 (as torchvision's ``ToTensor`` makes them; rounded to the nearest of 256 levels). These
  skip decoding; the model normalises them as it does decoded images.

Either comes as JSON ``data`` or, with the binary-data extension (what tritonclient sends by
default), as ``binary_data_size`` bytes of the body after its JSON header, in input order.
Outputs go back the same two ways: JSON ``data`` (flat, row-major), or binary when the
request asks (``binary_data_output`` for all, an output's ``binary_data`` for one).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from abn.preprocess import InputSpec
from service.engine import Answer
from service.errors import PayloadTooLarge, ServiceError
from service.v2_schemas import InferRequest, Parameters, RequestInput, TensorMetadata

IMAGE_INPUT = "image"
PIXELS_INPUT = "pixels"
BINARY_SIZE = "binary_data_size"
# MLServer's input annotation for BYTES that are base64 text; here it is what JSON BYTES are
# anyway, and it makes binary BYTES elements base64 text too
CONTENT_TYPE = "content_type"
BASE64 = "base64"
PIXEL_DTYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
_LENGTH = struct.Struct("<I")


class BadTensor(ServiceError):
    """A v2 request that is not well formed (the protocol answers these 400)."""

    status_code = 400
    error_type = "invalid_request"


@dataclass(frozen=True, slots=True)
class Answered:
    """What the outputs are made of: the answers, the class names, and each answer's id."""

    answers: Sequence[Answer]
    classes: Sequence[str]
    ids: Sequence[str]  # for POST /feedback, one per image


@dataclass(frozen=True)
class OutputSpec:
    """One output the route can answer: its datatype and how to build it from the answers."""

    datatype: str
    build: Callable[[Answered], np.ndarray]


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], np.object_)


OUTPUTS: dict[str, OutputSpec] = {
    "label": OutputSpec(
        "INT64", lambda r: np.array([a.top_labels[0] for a in r.answers], np.int64)
    ),
    "class_name": OutputSpec(
        "BYTES", lambda r: _strings([r.classes[a.top_labels[0]] for a in r.answers])
    ),
    "probabilities": OutputSpec(
        "FP32", lambda r: torch.stack([a.probabilities for a in r.answers]).numpy()
    ),
    "bit_widths": OutputSpec("INT64", lambda r: np.array([a.widths for a in r.answers], np.int64)),
    "bitops": OutputSpec("FP64", lambda r: np.array([a.bitops for a in r.answers], np.float64)),
    "id": OutputSpec("BYTES", lambda r: _strings(r.ids)),
}


def input_metadata(spec: InputSpec) -> list[TensorMetadata]:
    shape = [-1, spec.channels, spec.height, spec.width]
    return [
        TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1]),
        TensorMetadata(name=PIXELS_INPUT, datatype="UINT8", shape=shape),
    ]


def output_metadata(num_classes: int, num_layers: int) -> list[TensorMetadata]:
    shapes = {"probabilities": [-1, num_classes], "bit_widths": [-1, num_layers]}
    return [
        TensorMetadata(name=name, datatype=out.datatype, shape=shapes.get(name, [-1]))
        for name, out in OUTPUTS.items()
    ]


def split_body(body: bytes, header_lengths: list[str]) -> tuple[bytes, bytes]:
    """The JSON header and the binary part, from ``Inference-Header-Content-Length``."""
    if not header_lengths:
        return body, b""
    text = header_lengths[0].strip()
    if len(header_lengths) > 1 or not (text.isascii() and text.isdigit()):
        raise BadTensor(
            "Inference-Header-Content-Length must be given once, as the byte length of the "
            "JSON part at the start of the body"
        )
    length = int(text)
    if length > len(body):
        raise BadTensor(
            f"Inference-Header-Content-Length is {length}, longer than the body ({len(body)} bytes)"
        )
    return body[:length], body[length:]


def read_input(
    request: InferRequest, binary: bytes, spec: InputSpec, max_images: int
) -> list[bytes] | torch.Tensor:
    """The request's one input: encoded images (``image``) or a uint8 ``(N, C, H, W)``
    tensor (``pixels``)."""
    allowed = f"'{IMAGE_INPUT}' (BYTES, encoded images) or '{PIXELS_INPUT}' (UINT8 or FP32)"
    if len(request.inputs) != 1:
        raise BadTensor(f"send exactly one input, {allowed}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    raw = _raw_part(tensor, binary)
    if tensor.name == IMAGE_INPUT:
        return _images(tensor, raw, max_images)
    if tensor.name == PIXELS_INPUT:
        return _pixels(tensor, raw, spec, max_images)
    raise BadTensor(f"unknown input {ascii(tensor.name[:40])}; send {allowed}")


def _raw_part(tensor: RequestInput, binary: bytes) -> bytes | None:
    """The input's bytes in the binary part (None: it carries JSON ``data``)."""
    parameters = tensor.parameters or {}
    unknown = sorted(set(parameters) - {BINARY_SIZE, CONTENT_TYPE})
    if unknown:
        raise BadTensor(
            f"input parameter {ascii(unknown[0][:40])} is not supported; the input "
            f"parameters are {BINARY_SIZE} and {CONTENT_TYPE} (shared memory is not)"
        )
    if parameters.get(CONTENT_TYPE, BASE64) != BASE64 or (
        CONTENT_TYPE in parameters and tensor.name != IMAGE_INPUT
    ):
        raise BadTensor(
            f"input parameter {CONTENT_TYPE} may only be '{BASE64}', on '{IMAGE_INPUT}'"
        )
    size = parameters.get(BINARY_SIZE)
    if size is None:
        if tensor.data is None:
            raise BadTensor(f"input '{tensor.name}' has neither data nor {BINARY_SIZE}")
        if binary:
            raise BadTensor(f"the body has {len(binary)} binary bytes that no input claims")
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadTensor(f"{BINARY_SIZE} must be a non-negative integer")
    if tensor.data is not None:
        raise BadTensor(f"input '{tensor.name}' has both data and {BINARY_SIZE}; send one")
    if size != len(binary):
        raise BadTensor(
            f"input '{tensor.name}' declares {BINARY_SIZE} {size}, but the body's binary part "
            f"after Inference-Header-Content-Length has {len(binary)} bytes"
        )
    return binary


def _batch_size(tensor: RequestInput, max_images: int) -> int:
    n = tensor.shape[0] if tensor.shape else 0
    if n < 1:
        raise BadTensor(f"input '{tensor.name}' has shape {tensor.shape}: no image")
    if n > max_images:
        raise PayloadTooLarge(
            f"input '{tensor.name}' holds {n} images; at most {max_images} per request "
            f"(ABN_MAX_IMAGES_PER_REQUEST, ABN_MAX_QUEUE_SIZE)"
        )
    return n


def _images(tensor: RequestInput, raw: bytes | None, max_images: int) -> list[bytes]:
    if tensor.datatype != "BYTES":
        raise BadTensor(f"input '{IMAGE_INPUT}' must be BYTES, not {ascii(tensor.datatype[:20])}")
    if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
        raise BadTensor(f"input '{IMAGE_INPUT}' must have shape [N] or [N, 1], not {tensor.shape}")
    n = _batch_size(tensor, max_images)
    if raw is None:
        images = _base64_elements(tensor.data or [])
    else:
        images = _split_bytes(raw)
        if (tensor.parameters or {}).get(CONTENT_TYPE) == BASE64:
            images = _base64_elements([image.decode("latin-1") for image in images])
    if len(images) != n:
        raise BadTensor(
            f"input '{IMAGE_INPUT}' has shape {tensor.shape} but {len(images)} elements"
        )
    return images


def _split_bytes(raw: bytes) -> list[bytes]:
    """The elements of a BYTES tensor in the protocol's binary serialisation."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadTensor("the BYTES tensor is truncated in an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadTensor(
                f"BYTES element #{len(elements)} declares {length} bytes; only "
                f"{len(raw) - offset} are left"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _base64_elements(data: list[Any]) -> list[bytes]:
    images = []
    for i, element in enumerate(_flatten(data)):
        if not isinstance(element, str):
            raise BadTensor(f"BYTES element #{i} must be a string (the image in base64)")
        try:
            images.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise BadTensor(f"BYTES element #{i} is not base64 (RFC 4648, with padding)") from None
    return images


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _pixels(
    tensor: RequestInput, raw: bytes | None, spec: InputSpec, max_images: int
) -> torch.Tensor:
    dtype = PIXEL_DTYPES.get(tensor.datatype)
    if dtype is None:
        raise BadTensor(
            f"input '{PIXELS_INPUT}' must be UINT8 (0-255) or FP32 (0-1), not "
            f"{ascii(tensor.datatype[:20])}"
        )
    n = _batch_size(tensor, max_images)
    shape = [n, spec.channels, spec.height, spec.width]
    if tensor.shape != shape:
        raise BadTensor(
            f"input '{PIXELS_INPUT}' must have shape [N, {spec.channels}, {spec.height}, "
            f"{spec.width}] (the model's input), not {tensor.shape}"
        )
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise BadTensor(
                f"input '{PIXELS_INPUT}' of shape {shape} and {tensor.datatype} needs "
                f"{count * dtype.itemsize} bytes; the binary part has {len(raw)}"
            )
        values = np.frombuffer(raw, dtype=dtype)
    else:
        values = _json_values(tensor.data or [], count)
    return torch.from_numpy(_to_uint8(values, tensor.datatype).reshape(shape))


def _json_values(data: list[Any], count: int) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise BadTensor(f"input '{PIXELS_INPUT}' has {len(flat)} values; its shape needs {count}")
    if not all(type(v) in (int, float) for v in flat):  # bool is not a pixel
        raise BadTensor(f"input '{PIXELS_INPUT}' values must be numbers")
    return np.array(flat, dtype=np.float64)


def _to_uint8(values: np.ndarray, datatype: str) -> np.ndarray:
    """uint8 pixels, refusing values outside the datatype's documented range."""
    if datatype == "UINT8":
        if values.dtype != np.uint8 and not (
            np.all(values == np.round(values)) and np.all((values >= 0) & (values <= 255))
        ):
            raise BadTensor(f"input '{PIXELS_INPUT}' UINT8 values must be integers 0 to 255")
        return values.astype(np.uint8)
    if not (np.all(np.isfinite(values)) and np.all((values >= 0.0) & (values <= 1.0))):
        raise BadTensor(f"input '{PIXELS_INPUT}' FP32 values must be finite, 0 to 1")
    return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)


def requested_outputs(request: InferRequest, binary_default: bool) -> list[tuple[str, bool]]:
    """``(name, binary)`` of each output to answer, in order; all of them when none is asked."""
    if request.outputs is None:
        return [(name, binary_default) for name in OUTPUTS]
    chosen: list[tuple[str, bool]] = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise BadTensor(
                f"unknown output {ascii(output.name[:40])}; the outputs are {', '.join(OUTPUTS)}"
            )
        if any(name == output.name for name, _ in chosen):
            raise BadTensor(f"output '{output.name}' is asked for twice")
        chosen.append((output.name, _binary_flag(output.parameters, binary_default)))
    return chosen


def _binary_flag(parameters: Parameters | None, default: bool) -> bool:
    unknown = sorted(set(parameters or {}) - {"binary_data"})
    if unknown:
        raise BadTensor(
            f"output parameter {ascii(unknown[0][:40])} is not supported; the only one is "
            f"binary_data (no classification extension: the label and class_name outputs "
            f"give the top class)"
        )
    flag = (parameters or {}).get("binary_data", default)
    if not isinstance(flag, bool):
        raise BadTensor("output parameter binary_data must be true or false")
    return flag


def encode_outputs(
    answered: Answered, outputs: list[tuple[str, bool]]
) -> tuple[list[dict[str, Any]], bytes]:
    """The response's ``outputs`` and the binary part that follows its JSON (may be empty)."""
    entries, parts = [], []
    for name, binary in outputs:
        spec = OUTPUTS[name]
        array = spec.build(answered)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": spec.datatype,
            "shape": list(array.shape),
        }
        if binary:
            raw = _serialise(array, spec.datatype)
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            parts.append(raw)
        elif spec.datatype == "BYTES":
            entry["data"] = [value.decode() for value in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    return entries, b"".join(parts)


def _serialise(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(v)) + v for v in array.reshape(-1))
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
