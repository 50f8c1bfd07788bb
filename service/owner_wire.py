"""The frames between the front ends and the model-owner process (``ABN_MODEL_PROCESS=shared``).

Why a framing of its own: nothing in ``service/`` may unpickle (tests/test_security_static.py),
so jobs and answers cross the Unix socket as fixed ``struct`` headers followed by raw arrays
(uint8 pixels, float32 probabilities), read back with ``torch.frombuffer``. Every frame is
``<length u32><kind u8><payload>``; the owner speaks first with the model's facts (JSON).

Front end -> owner: ``JOB`` (one image, its budget, pinned widths, time left to its deadline,
request id), ``CANCEL`` (its client gave up). Owner -> front end: ``FACTS`` once, then per job
one ``RESULT`` (the :class:`~service.engine.Answer` fields) or ``ERROR`` (a kind of
:data:`ERROR_KINDS`, the Retry-After of a full queue, the message).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from service.engine import Answer, InferenceFailed
from service.errors import DeadlineExceeded, QueueFull, ServiceError, ShuttingDown

FACTS, JOB, CANCEL, RESULT, ERROR = 1, 2, 3, 4, 5
MAX_FRAME_BYTES = 256 * 1024 * 1024  # beyond: the stream is corrupt, the link is closed

_FRAME = struct.Struct("<IB")  # payload length, kind
_JOB = struct.Struct("<QddHHHHH")  # id, budget, seconds left, widths, id bytes, C, H, W
_CANCEL = struct.Struct("<Q")
_RESULT = struct.Struct("<QIdHHBH")  # id, batch size, bitops, classes, layers, first pass?, k
_ERROR = struct.Struct("<QBI")  # id, kind, Retry-After seconds

# The errors the owner's engine answers a job with, by code; the front end raises the same.
ERROR_KINDS: dict[int, type[ServiceError]] = {
    1: QueueFull,
    2: ShuttingDown,
    3: DeadlineExceeded,
    4: InferenceFailed,
}
_ERROR_CODES = {cls: code for code, cls in ERROR_KINDS.items()}


class WireError(ValueError):
    """A frame that cannot be read: the peer is not speaking this protocol."""


@dataclass(frozen=True, slots=True)
class Job:
    job_id: int
    image: torch.Tensor  # (C, H, W) uint8
    budget: float
    pinned: list[int] | None
    seconds_left: float
    request_id: str


def frame(kind: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), kind) + payload


def split_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Remove every complete frame from the front of ``buffer``; ``(kind, payload)`` each."""
    frames = []
    view = memoryview(buffer)
    start = 0
    while len(buffer) - start >= _FRAME.size:
        length, kind = _FRAME.unpack_from(view, start)
        if length > MAX_FRAME_BYTES:
            raise WireError(f"a frame of {length} bytes")
        end = start + _FRAME.size + length
        if end > len(buffer):
            break
        frames.append((kind, bytes(view[start + _FRAME.size : end])))
        start = end
    view.release()
    del buffer[:start]
    return frames


def encode_job(job: Job) -> bytes:
    image = job.image
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise WireError(f"an image must be (C, H, W) uint8, not {image.dtype} {image.shape}")
    pinned = bytes(job.pinned or ())
    rid = job.request_id.encode()[:65535]
    c, h, w = image.shape
    header = _JOB.pack(job.job_id, job.budget, job.seconds_left, len(pinned), len(rid), c, h, w)
    return frame(JOB, header + pinned + rid + image.contiguous().numpy().tobytes())


def decode_job(payload: bytes) -> Job:
    job_id, budget, left, n_pinned, n_rid, c, h, w = _unpack(_JOB, payload)
    at = _JOB.size
    pinned = list(payload[at : at + n_pinned]) or None
    at += n_pinned
    rid = payload[at : at + n_rid].decode(errors="replace")
    at += n_rid
    if len(payload) - at != c * h * w:
        raise WireError(f"a job of {len(payload) - at} pixel bytes for a {c}x{h}x{w} image")
    pixels = torch.frombuffer(bytearray(memoryview(payload)[at:]), dtype=torch.uint8)
    pixels = pixels.view(c, h, w)
    return Job(job_id, pixels, budget, pinned, left, rid)


def encode_cancel(job_id: int) -> bytes:
    return frame(CANCEL, _CANCEL.pack(job_id))


def decode_cancel(payload: bytes) -> int:
    return int(_unpack(_CANCEL, payload)[0])


def encode_result(job_id: int, answer: Answer) -> bytes:
    probabilities = answer.probabilities.float()  # float32 already: no copy
    first = answer.first_pass_widths
    k = len(answer.top_labels)
    header = _RESULT.pack(
        job_id,
        answer.batch_size,
        answer.bitops,
        probabilities.shape[0],
        len(answer.widths),
        first is not None,
        k,
    )
    return frame(
        RESULT,
        header
        + probabilities.numpy().tobytes()
        + bytes(answer.widths)
        + bytes(first or ())
        + struct.pack(f"<{k}H{k}f", *answer.top_labels, *answer.top_probabilities),
    )


def decode_result(payload: bytes) -> tuple[int, Answer]:
    job_id, batch, bitops, classes, layers, has_first, k = _unpack(_RESULT, payload)
    if not classes or len(payload) != _RESULT.size + 4 * classes + layers * (1 + has_first) + 6 * k:
        raise WireError("a result of the wrong length")
    at = _RESULT.size + 4 * classes
    raw = bytearray(memoryview(payload)[_RESULT.size : at])
    probabilities = torch.frombuffer(raw, dtype=torch.float32)
    widths = list(payload[at : at + layers])
    at += layers
    first = list(payload[at : at + layers]) if has_first else None
    at += layers if has_first else 0
    top = struct.unpack_from(f"<{k}H{k}f", payload, at)
    answer = Answer(probabilities, widths, bitops, batch, list(top[:k]), list(top[k:]), first)
    return job_id, answer


def encode_error(job_id: int, error: ServiceError) -> bytes:
    """``error`` as a frame; an error of no known kind travels as a failed inference."""
    code = _ERROR_CODES.get(type(error), _ERROR_CODES[InferenceFailed])
    retry_after = int(error.headers.get("Retry-After", "0"))
    return frame(ERROR, _ERROR.pack(job_id, code, retry_after) + error.message.encode())


def decode_error(payload: bytes) -> tuple[int, ServiceError]:
    job_id, code, retry_after = _unpack(_ERROR, payload)
    message = payload[_ERROR.size :].decode(errors="replace")
    kind = ERROR_KINDS.get(code)
    if kind is None:
        raise WireError(f"an error of unknown kind {code}")
    if kind is QueueFull:
        return job_id, QueueFull(message, retry_after)
    return job_id, kind(message)


def _unpack(layout: struct.Struct, payload: bytes) -> tuple:
    if len(payload) < layout.size:
        raise WireError(f"a frame of {len(payload)} bytes, shorter than its header")
    return layout.unpack_from(payload)
