"""One write per response (service/response_writes.py): the head uvicorn writes for
``http.response.start`` goes out with the first body write, in order and unchanged; the interim
``100 Continue`` is never held; closing sends a head still held."""

from __future__ import annotations

from service.response_writes import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_the_head_goes_out_with_the_body_in_one_write() -> None:
    transport = RecordingTransport()
    wrapped = HeadWithBody(transport)  # type: ignore[arg-type]
    wrapped.write(HEAD)
    assert transport.writes == []
    wrapped.write(b"ok")
    assert transport.writes == [HEAD + b"ok"]


def test_a_streamed_body_sends_its_later_chunks_as_they_come() -> None:
    transport = RecordingTransport()
    wrapped = HeadWithBody(transport)  # type: ignore[arg-type]
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    for data in (chunked, b"2\r\nab\r\n", b"HTTP/ in a body\r\n", b"0\r\n\r\n"):
        wrapped.write(data)
    assert transport.writes == [chunked + b"2\r\nab\r\n", b"HTTP/ in a body\r\n", b"0\r\n\r\n"]


def test_100_continue_is_written_at_once() -> None:
    transport = RecordingTransport()
    wrapped = HeadWithBody(transport)  # type: ignore[arg-type]
    wrapped.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    wrapped.write(HEAD)
    wrapped.write(b"ok")
    assert transport.writes[1:] == [HEAD + b"ok"]


def test_closing_sends_a_head_still_held_then_closes() -> None:
    transport = RecordingTransport()
    wrapped = HeadWithBody(transport)  # type: ignore[arg-type]
    wrapped.write(HEAD)
    assert not wrapped.is_closing()  # the transport's own answer
    wrapped.close()
    assert transport.writes == [HEAD] and transport.closed and wrapped.is_closing()
