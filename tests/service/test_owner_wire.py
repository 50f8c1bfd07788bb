"""The frames between front ends and the model owner: every field survives the trip, a stream
cut anywhere is reassembled, and a stream that is not this protocol is refused."""

from __future__ import annotations

import pytest
import torch

from service.engine import Answer, InferenceFailed
from service.errors import DeadlineExceeded, QueueFull, ServiceError, ShuttingDown
from service.owner_wire import (
    CANCEL,
    ERROR,
    JOB,
    RESULT,
    Job,
    WireError,
    decode_cancel,
    decode_error,
    decode_job,
    decode_result,
    encode_cancel,
    encode_error,
    encode_job,
    encode_result,
    frame,
    split_frames,
)


def job(pinned: list[int] | None = None) -> Job:
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    return Job(41, image, 2.5e7, pinned, 0.75, "req-é-1")


def answer(first_pass: list[int] | None) -> Answer:
    probabilities = torch.softmax(torch.randn(10), 0)
    top = probabilities.topk(5)
    return Answer(
        probabilities,
        [8, 4, 4, 3, 2, 1, 8, 2],
        123456789.125,
        7,
        top.indices.tolist(),
        top.values.tolist(),
        first_pass,
    )


def one_frame(data: bytes) -> tuple[int, bytes]:
    buffer = bytearray(data)
    (got,) = split_frames(buffer)
    assert buffer == b""
    return got


@pytest.mark.parametrize("pinned", [None, [8, 4, 4, 3, 2, 1, 8, 2]])
def test_a_job_arrives_whole(pinned: list[int] | None) -> None:
    sent = job(pinned)
    kind, payload = one_frame(encode_job(sent))
    assert kind == JOB
    got = decode_job(payload)
    assert torch.equal(got.image, sent.image) and got.image.dtype == torch.uint8
    assert (got.job_id, got.budget, got.pinned, got.seconds_left, got.request_id) == (
        41,
        2.5e7,
        pinned,
        0.75,
        "req-é-1",
    )


def test_only_uint8_images_travel() -> None:
    with pytest.raises(WireError):
        encode_job(Job(1, torch.zeros(1, 2, 2), 1.0, None, 1.0, ""))


@pytest.mark.parametrize("first_pass", [None, [1, 1, 2, 2, 3, 3, 4, 4]])
def test_an_answer_arrives_exactly(first_pass: list[int] | None) -> None:
    """Every field as the engine made it: the float32 probabilities and the top-k values
    bit for bit, so a front end answers what a single process would."""
    sent = answer(first_pass)
    kind, payload = one_frame(encode_result(9, sent))
    assert kind == RESULT
    job_id, got = decode_result(payload)
    assert job_id == 9
    assert torch.equal(got.probabilities, sent.probabilities)
    assert got.probabilities.dtype == torch.float32
    assert got.widths == sent.widths and got.bitops == sent.bitops
    assert got.batch_size == 7 and got.first_pass_widths == first_pass
    assert got.top_labels == sent.top_labels
    assert got.top_probabilities == sent.top_probabilities


@pytest.mark.parametrize(
    "error",
    [
        QueueFull("the queue is full", 3),
        ShuttingDown("shutting down"),
        DeadlineExceeded("waited too long"),
        InferenceFailed("inference failed: RuntimeError"),
    ],
)
def test_a_refusal_keeps_its_kind_message_and_retry_after(error: ServiceError) -> None:
    kind, payload = one_frame(encode_error(5, error))
    assert kind == ERROR
    job_id, got = decode_error(payload)
    assert job_id == 5 and type(got) is type(error)
    assert (got.status_code, got.error_type, got.message) == (
        error.status_code,
        error.error_type,
        error.message,
    )
    assert got.headers == error.headers  # Retry-After for a full queue


def test_an_error_of_another_kind_travels_as_a_failed_inference() -> None:
    _, got = decode_error(one_frame(encode_error(1, ServiceError("odd")))[1])
    assert isinstance(got, InferenceFailed) and got.message == "odd"


def test_a_stream_cut_anywhere_is_reassembled_in_order() -> None:
    stream = encode_job(job()) + encode_cancel(41) + encode_result(41, answer(None))
    for cut in range(len(stream) + 1):
        buffer = bytearray(stream[:cut])
        frames = split_frames(buffer)
        buffer += stream[cut:]
        frames += split_frames(buffer)
        assert [k for k, _ in frames] == [JOB, CANCEL, RESULT], cut
        assert buffer == b""
    assert decode_cancel(frames[1][1]) == 41


def test_a_stream_that_is_not_this_protocol_is_refused() -> None:
    with pytest.raises(WireError):
        split_frames(bytearray(b"GET / HTTP/1.1\r\n\r\n"))  # a length of ~1.2 GB
    with pytest.raises(WireError):
        decode_job(b"\x00" * 5)
    with pytest.raises(WireError):  # pixels missing
        decode_job(one_frame(encode_job(job()))[1][:-1])
    with pytest.raises(WireError):
        decode_result(one_frame(encode_result(1, answer(None)))[1] + b"\x00")
    with pytest.raises(WireError):
        decode_error(one_frame(frame(ERROR, b"\x01" * 8 + b"\x09" + b"\x00" * 4))[1])
