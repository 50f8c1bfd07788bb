"""Integration: what the network does to a real ``abn serve``, over raw sockets.

Slow uploads and slow headers are cut off at their deadlines (408, connection closed), whether
the protocol held the body or the app was reading it, and oversized headers at 64 KiB (431,
which the client reads however much it still sends); a response sent before its body arrived
closes the connection; clients that vanish mid-upload or while queued are counted 499 and
logged at INFO without a traceback, and a vanished client's queued work never reaches the
model; past the concurrency cap a request is answered 503 at once. One server, short
deadlines, every test a few seconds.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings

from .helpers import Scrape, ServerProcess, png, running_servers

pytestmark = pytest.mark.timeout(180)  # the shared tiny model may be built in setup

BODY_TIMEOUT = 1.0
HEADER_TIMEOUT = 1.0
LIMIT = 12
IMAGE = png(7)
MAX_BODY_BYTES = Settings.model_fields["max_body_bytes"].default


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    logs = tmp_path_factory.mktemp("slow-client-logs")
    spec = {
        "body_timeout_seconds": BODY_TIMEOUT,
        "header_timeout_seconds": HEADER_TIMEOUT,
        "limit_concurrency": LIMIT,
        "log_level": "info",
        "model_gate": logs / "model-gate",  # closed: the model holds batches (queued requests)
    }
    with running_servers(tiny_model_dir, logs, {"slow": spec}) as started:
        yield started["slow"]


def scrape(server: ServerProcess) -> Scrape:
    return Scrape(httpx.get(server.url + "/metrics").text)


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(length: int, content_type: str = "image/png", extra: str = "") -> bytes:
    return (
        f"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    sock.settimeout(limit)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic()


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    header, _, body = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, json.loads(body)


@pytest.mark.parametrize(
    "extra",
    ["", "Expect: 100-continue\r\n"],
    ids=["held-by-the-protocol", "streamed-to-the-app"],
)
def test_a_trickled_body_gets_408_at_its_deadline_and_the_connection_closes(
    server: ServerProcess, extra: str
) -> None:
    """Either way a body comes: buffered below the app until it is complete (the usual case),
    or read by the app as it comes (a client that waits for ``100 Continue`` first)."""
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(head(len(IMAGE), extra=extra) + IMAGE[:10])
        sock.settimeout(0.3)
        sent = 10
        while time.monotonic() - start < BODY_TIMEOUT * 3:  # one byte every 0.3 s
            try:
                if peeked := sock.recv(65536, socket.MSG_PEEK):
                    if not peeked.startswith(b"HTTP/1.1 100"):
                        break
                    sock.recv(len(b"HTTP/1.1 100 Continue\r\n\r\n"))  # the interim answer
            except TimeoutError:
                sock.sendall(IMAGE[sent : sent + 1])
                sent += 1
        raw, closed = read_until_closed(sock)
    status, headers, body = parse(raw)
    assert status == 408 and body["error_type"] == "body_timeout", raw
    assert set(body) == {"error", "error_type"}
    assert headers["connection"] == "close" and headers["x-request-id"]
    assert BODY_TIMEOUT * 0.9 <= closed - start < BODY_TIMEOUT * 1.1 + 1.5, closed - start


def test_slow_or_absent_headers_are_cut_off(server: ServerProcess) -> None:
    with connect(server) as partial, connect(server) as silent:
        start = time.monotonic()
        partial.sendall(b"POST /classify HTTP/1.1\r\nHost: test\r\n")
        partial.settimeout(0.3)
        for i in range(20):  # a header line every 0.3 s, never the blank line
            try:
                if partial.recv(65536, socket.MSG_PEEK):
                    break
            except TimeoutError:
                partial.sendall(f"X-Slow-{i}: {i}\r\n".encode())
        raw, closed = read_until_closed(partial)
        status, headers, body = parse(raw)
        assert status == 408 and body["error_type"] == "header_timeout", raw
        assert headers["connection"] == "close"
        assert HEADER_TIMEOUT * 0.9 <= closed - start < HEADER_TIMEOUT + 1.5
        raw, closed = read_until_closed(silent)  # sent nothing: closed without a word
        assert raw == b"" and closed - start < HEADER_TIMEOUT + 1.5


def test_a_later_request_on_a_kept_alive_connection_has_a_header_deadline_too(
    server: ServerProcess,
) -> None:
    """After an answer, the next request's headers are held to the same deadline, counted from
    their first bytes: here a request line whose headers never follow it."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed before the first answer was whole: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in answer
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # begun, its headers never finished
        raw, closed = read_until_closed(sock)
    status, _, body = parse(raw)
    assert status == 408 and body["error_type"] == "header_timeout", raw
    assert HEADER_TIMEOUT * 0.9 <= closed - start < HEADER_TIMEOUT + 1.5


@pytest.mark.parametrize("size", [100_000, 4_000_000])
def test_oversized_headers_get_431_and_the_connection_closes(
    server: ServerProcess, size: int
) -> None:
    """Even when the client is still sending after the answer (4 MB outruns the socket
    buffers): closed at once, the kernel would reset the connection and drop the 431 unread."""
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /classify HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * size)
        raw, closed = read_until_closed(sock)
    status, headers, body = parse(raw)
    assert status == 431 and body["error_type"] == "headers_too_large", raw
    assert headers["connection"] == "close" and closed - start < HEADER_TIMEOUT


def test_an_answer_before_the_body_arrived_closes_the_connection(server: ServerProcess) -> None:
    with connect(server) as sock:  # a declared body over the limit is refused from its headers
        start = time.monotonic()
        sock.sendall(head(MAX_BODY_BYTES + 1) + b"x" * 100)
        raw, closed = read_until_closed(sock)
    status, headers, body = parse(raw)
    assert status == 413 and headers["connection"] == "close", raw
    assert closed - start < BODY_TIMEOUT  # at once, not at the body's deadline


def test_clients_vanishing_mid_upload_are_499_not_server_errors(server: ServerProcess) -> None:
    before = scrape(server)
    for _ in range(5):
        with connect(server) as sock:
            sock.sendall(head(len(IMAGE)) + IMAGE[:20])
            time.sleep(0.05)
    end = time.monotonic() + 10
    while (after := scrape(server)).value(
        "abn_requests_total", route="/classify", status_code="499"
    ) - before.value("abn_requests_total", route="/classify", status_code="499") < 5:
        assert time.monotonic() < end, "the disconnects were not counted"
        time.sleep(0.05)
    assert after.value("abn_requests_total", status_code="500") == 0
    log = server.log()
    assert log.count("the client disconnected during the upload (499)") >= 5, log[-3000:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def wait_for(server: ServerProcess, condition: Callable[[Scrape], bool], what: str) -> Scrape:
    """Scrape until ``condition`` holds (at most 10 s); the scrape that showed it."""
    end = time.monotonic() + 10
    while not condition(metrics := scrape(server)):
        assert time.monotonic() < end, what
        time.sleep(0.05)
    return metrics


def test_a_client_gone_while_queued_is_dropped_before_the_model(server: ServerProcess) -> None:
    """With the model held by one request, a second one queues; its client leaves; it is
    counted 499, and once the model is free only the first request has run."""
    gate = server.model_gate
    assert gate is not None
    before = scrape(server)
    gone_before = before.value("abn_requests_total", status_code="499")
    gate.touch()
    holder = connect(server)
    try:
        holder.sendall(head(len(IMAGE), extra="Connection: close\r\n") + IMAGE)  # held
        with connect(server) as sock:
            sock.sendall(head(len(IMAGE)) + IMAGE)
            wait_for(server, lambda m: m.value("abn_pending_requests") == 2, "it never queued")
        wait_for(
            server,
            lambda m: m.value("abn_requests_total", status_code="499") > gone_before,
            "the vanished request was never dropped",
        )
        gate.unlink()
        raw, _ = read_until_closed(holder)
    finally:
        holder.close()
        gate.unlink(missing_ok=True)
    assert parse(raw)[0] == 200, raw
    after = wait_for(server, lambda m: m.value("abn_pending_requests") == 0, "never finished")
    assert after.value("abn_batch_size_count") == before.value("abn_batch_size_count") + 1
    assert after.value("abn_batch_size_sum") == before.value("abn_batch_size_sum") + 1
    assert after.value("abn_requests_total", status_code="500") == 0
    assert "while its request waited for the model; the work was dropped" in server.log()
    r = httpx.post(server.url + "/classify", content=IMAGE, headers={"Content-Type": "image/png"})
    assert r.status_code == 200  # and the server goes on serving


def test_past_the_concurrency_cap_requests_get_503_at_once(server: ServerProcess) -> None:
    holders = [connect(server) for _ in range(LIMIT)]  # open, headers pending
    try:
        for sock in holders:
            sock.sendall(b"POST /classify HTTP/1.1\r\n")
        time.sleep(0.1)
        start = time.monotonic()
        r = httpx.post(
            server.url + "/classify", content=IMAGE, headers={"Content-Type": "image/png"}
        )
        waited = time.monotonic() - start
        assert r.status_code == 503 and r.json()["error_type"] == "overloaded", r.text
        assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        assert waited < HEADER_TIMEOUT, waited  # at once, not when the holders are cut off
    finally:
        for sock in holders:
            sock.close()
    end = time.monotonic() + 5
    while httpx.get(server.url + "/healthz").status_code != 200:
        assert time.monotonic() < end
        time.sleep(0.05)
    assert scrape(server).value("abn_requests_total", route="/classify", status_code="503") == 1
