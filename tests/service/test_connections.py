"""The HTTP protocol's request buffering and body deadline (service/connections.py), driven
through asyncio's protocol interface with an in-memory transport and a recording ASGI app.

What a user relies on: a body arriving in pieces reaches the app once, whole; the app is not
started for a request whose body is still coming (so a slow upload holds no request task),
except where it must answer before the body (``Expect: 100-continue``, a declared body over the
limit, no body at all); a held request still reaches the app when its deadline passes (marked
late), when its client leaves (a disconnect) and when the server shuts down; a pipelined
request whose body came early is not left waiting; the scope says when the whole body is
there and carries a future that the client's leaving resolves. Real-process behaviour (408,
499, 503 on shutdown) is in test_slow_clients.py and test_server.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.server import ServerState

from service.connections import (
    BODY_COMPLETE_KEY,
    BODY_DEADLINE_KEY,
    BODY_LATE_KEY,
    DEADLINE_SPREAD,
    GONE_KEY,
    GuardedHttpToolsProtocol,
    body_deadline,
)

MAX_BODY = 1_000_000


class MemoryTransport(asyncio.Transport):
    """What the protocol writes, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes: list[bytes] = []  # each write, as the socket would send it
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class RecordingApp:
    """Reads the whole request (each ``receive`` recorded), then answers 200 with the body's
    length; the scope of each request it was started for."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []
        self.received: list[dict] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.scopes.append(scope)
        size = 0
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        answer = str(size).encode()
        length = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": answer})


class Connection:
    """One protocol object on a memory transport, as uvicorn would make it."""

    def __init__(self, app: RecordingApp, body_timeout: float = 5.0) -> None:
        protocol = GuardedHttpToolsProtocol.configured(
            header_timeout=5.0,
            body_timeout=body_timeout,
            max_body_bytes=MAX_BODY,
            max_concurrency=None,
        )
        config = uvicorn.Config(app, http=protocol, log_level="warning", lifespan="off")
        config.load()
        self.protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config,
            server_state=ServerState(),
            app_state={},
            _loop=asyncio.get_running_loop(),
        )
        self.transport = MemoryTransport()
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)


def post(length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    chunked = "" if length is not None else "Transfer-Encoding: chunked\r\n"
    return f"POST /x HTTP/1.1\r\nHost: t\r\n{size}{chunked}{extra}\r\n".encode()


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def on_a_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the async test on a fresh event loop (the protocol needs a running loop)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@on_a_loop
async def test_a_body_in_pieces_reaches_the_app_once_and_whole(app: RecordingApp) -> None:
    conn = Connection(app)
    conn.send(post(10) + b"01")
    for piece in (b"234", b"5", b"67"):
        await turns()
        assert app.scopes == []  # its body is still coming: no request task yet
        conn.send(piece)
    conn.send(b"89")
    await turns()
    assert len(app.scopes) == 1
    assert app.received == [{"type": "http.request", "body": b"0123456789", "more_body": False}]
    assert conn.transport.written.endswith(b"10")


@pytest.mark.parametrize(
    "head",
    [
        post(10, "Expect: 100-continue\r\n"),  # the client waits for an answer first
        post(MAX_BODY + 1),  # refused from its headers, at once
        b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",  # nothing to wait for
    ],
    ids=["expects-100-continue", "over-the-limit", "no-body"],
)
@on_a_loop
async def test_requests_that_must_be_answered_first_start_at_once(
    app: RecordingApp, head: bytes
) -> None:
    conn = Connection(app)
    conn.send(head)
    await turns()
    assert len(app.scopes) == 1


@on_a_loop
async def test_a_held_body_past_its_deadline_reaches_the_app_marked_late(
    app: RecordingApp,
) -> None:
    conn = Connection(app, body_timeout=0.05)
    conn.send(post(10) + b"01")
    await asyncio.sleep(0.05 * (1 + DEADLINE_SPREAD) + 0.1)
    assert len(app.scopes) == 1 and app.scopes[0][BODY_LATE_KEY] is True


@on_a_loop
async def test_a_client_leaving_a_held_upload_is_a_disconnect_to_the_app(
    app: RecordingApp,
) -> None:
    conn = Connection(app)
    conn.send(post(10) + b"01")
    await turns()
    assert app.scopes == []
    conn.protocol.connection_lost(None)
    await turns()
    assert len(app.scopes) == 1 and BODY_LATE_KEY not in app.scopes[0]
    assert app.received == [{"type": "http.disconnect"}]


@on_a_loop
async def test_shutting_down_hands_a_held_request_to_the_app(app: RecordingApp) -> None:
    conn = Connection(app)
    conn.send(post(10) + b"01")
    conn.protocol.shutdown()
    await turns()
    assert len(app.scopes) == 1  # it waits for its body there, within the shutdown grace


@on_a_loop
async def test_a_large_upload_streams_once_the_flow_control_limit_has_buffered(
    app: RecordingApp,
) -> None:
    conn = Connection(app)
    chunk = b"x" * (HIGH_WATER_LIMIT + 1)
    conn.send(post(None) + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    await turns()
    assert len(app.scopes) == 1 and app.received[0]["more_body"] is True
    for _ in range(5):  # small pieces after that wake the app once, at the end
        conn.send(b"3\r\nabc\r\n")
        await turns()
    conn.send(b"0\r\n\r\n")
    await turns()
    assert len(app.received) == 2
    assert app.received[1] == {"type": "http.request", "body": b"abc" * 5, "more_body": False}


@on_a_loop
async def test_a_pipelined_request_whose_body_came_early_is_not_held(app: RecordingApp) -> None:
    conn = Connection(app)
    conn.send(post(2) + b"ab" + post(3) + b"cde")  # both requests in one segment
    await turns(20)
    assert [m["body"] for m in app.received] == [b"ab", b"cde"]
    assert all(BODY_LATE_KEY not in scope for scope in app.scopes)


@on_a_loop
async def test_the_deadline_is_in_the_scope_and_spread_beyond_the_timeout(
    app: RecordingApp,
) -> None:
    conn = Connection(app, body_timeout=2.0)
    conn.send(post(2) + b"ab")
    await turns()
    assert BODY_DEADLINE_KEY in app.scopes[0]
    drawn = [body_deadline(100.0, 2.0) for _ in range(200)]
    assert all(102.0 <= d <= 102.0 + 2.0 * DEADLINE_SPREAD for d in drawn)
    assert max(drawn) - min(drawn) > 2.0 * DEADLINE_SPREAD / 2  # not one instant for all


@on_a_loop
async def test_the_scope_says_when_the_body_is_complete(app: RecordingApp) -> None:
    conn = Connection(app)
    chunk = b"x" * (HIGH_WATER_LIMIT + 1)
    conn.send(post(len(chunk) + 1) + chunk)  # streams to the app before it is complete
    await turns()
    assert len(app.scopes) == 1 and BODY_COMPLETE_KEY not in app.scopes[0]
    conn.send(b"y")
    await turns()
    assert app.scopes[0][BODY_COMPLETE_KEY] is True


class WaitingApp(RecordingApp):
    """Reads the request, then waits (as a route waits for the model) without answering."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await receive()
        await asyncio.Event().wait()


@on_a_loop
async def test_the_gone_future_resolves_when_the_client_leaves_an_unanswered_request() -> None:
    app = WaitingApp()
    conn = Connection(app)
    conn.send(post(2) + b"ab")
    await turns()
    gone = app.scopes[0][GONE_KEY]
    assert not gone.done()
    conn.protocol.connection_lost(None)
    assert gone.done()


@on_a_loop
async def test_the_gone_future_of_an_answered_request_stays_pending(app: RecordingApp) -> None:
    conn = Connection(app)
    conn.send(post(2) + b"ab")
    await turns()
    assert conn.transport.written.endswith(b"2")
    conn.protocol.connection_lost(None)  # a kept-alive connection closing after its answer
    assert not app.scopes[0][GONE_KEY].done()


@on_a_loop
async def test_each_answer_is_one_write_on_a_kept_alive_connection(app: RecordingApp) -> None:
    """Head and body go out in one write (service.response_writes), request after request;
    a HEAD answer, which has no body, is written as it is."""
    conn = Connection(app)
    for body in (b"ab", b"cde"):
        conn.send(post(len(body)) + body)
        await turns()
        answer = conn.transport.writes[-1]
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"\r\n\r\n" + str(len(body)).encode())
    assert len(conn.transport.writes) == 2
    conn.send(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await turns()
    assert len(conn.transport.writes) == 3
    assert conn.transport.writes[-1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert conn.transport.writes[-1].endswith(b"\r\n\r\n")
