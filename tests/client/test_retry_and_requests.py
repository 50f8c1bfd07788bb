"""abn_client without a server (httpx.MockTransport): what it sends, how it reads answers, and
when it retries. The real server: test_against_a_server.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from abn_client import AsyncClient, Client, RequestFailed, RetryPolicy
from abn_client.request import format_budget, format_widths, media_type
from abn_client.retry import parse_retry_after

pytestmark = pytest.mark.timeout(30)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
ANSWER = {
    "id": "r1",
    "model": {"name": "m", "version": "1"},
    "label": 3,
    "class_name": "Dress",
    "confidence": 0.9,
    "top_k": [{"label": 3, "class_name": "Dress", "probability": 0.9}],
    "bit_widths": [4, 4],
    "first_pass_bit_widths": None,
    "bitops": 2.0e7,
    "budget": 2.5e7,
    "policy": "pinned",
    "latency_ms": 1.5,
}


class Server:
    """Answers with the given responses in turn, and records what it was sent."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        given = self.responses.pop(0)  # a fresh copy: one response object may be listed twice
        return httpx.Response(given.status_code, headers=given.headers, content=given.content)


def refused(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"error": "the queue is full; retry later", "error_type": "queue_full"}
    return httpx.Response(status, json=body, headers=headers)


def sync_client(server: Server, **kw: object) -> Client:
    return Client("http://abn", transport=httpx.MockTransport(server), **kw)  # type: ignore[arg-type]


def test_headers_and_bodies() -> None:
    server = Server(
        httpx.Response(200, json=ANSWER), httpx.Response(200, json={"results": [ANSWER]})
    )
    with sync_client(server, api_key="k") as client:
        result = client.classify(PNG, budget=2.5e7, bit_widths=[4, 4], request_id="r1")
        many = client.classify_many([PNG, PNG], budget="25M")
    one, two = server.requests
    assert one.headers["X-BitOps-Budget"] == "25000000" and one.headers["X-Bit-Widths"] == "4,4"
    assert one.headers["Content-Type"] == "image/png" and one.content == PNG
    assert one.headers["Authorization"] == "Bearer k" and one.headers["X-Request-ID"] == "r1"
    assert two.headers["Content-Type"].startswith("multipart/form-data")
    assert two.content.count(b'name="image"') == 2 and two.headers["X-BitOps-Budget"] == "25M"
    assert result.bit_widths == [4, 4] and result.top_k[0].class_name == "Dress"
    assert result.policy == "pinned" and result.first_pass_bit_widths is None
    assert [r.id for r in many] == ["r1"]


def test_formatting() -> None:
    assert format_budget(2.5e7) == "25000000" and format_budget(1.5) == "1.5"
    assert format_budget("25M") == "25M"
    assert format_widths(4) == "4" and format_widths((8, 4, 2)) == "8,4,2"
    assert media_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert media_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert parse_retry_after("3") == 3.0 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_retries_after_the_servers_retry_after() -> None:
    server = Server(refused(429, "1"), refused(503), httpx.Response(200, json=ANSWER))
    with sync_client(server, retry=RetryPolicy(attempts=3, backoff_seconds=0.05)) as client:
        result = client.classify(PNG)
    assert result.label == 3 and len(server.requests) == 3
    assert server.times[1] - server.times[0] >= 1.0  # Retry-After: 1 was honoured
    assert 0.05 <= server.times[2] - server.times[1] < 1.0  # no Retry-After: the backoff


@pytest.mark.parametrize(
    ("responses", "attempts", "sent", "error_type"),
    [
        ((refused(429, "1"),) * 2, 2, 2, "queue_full"),  # attempts used up
        ((refused(429, "60"),), 3, 1, "queue_full"),  # longer than max_wait_seconds
        ((httpx.Response(422, json={"error": "x", "error_type": "invalid_budget"}),), 3, 1, None),
        ((httpx.Response(502, text="<html>bad gateway</html>"),), 3, 1, "http_error"),
    ],
)
def test_gives_up_with_the_servers_error(
    responses: tuple[httpx.Response, ...], attempts: int, sent: int, error_type: str | None
) -> None:
    server = Server(*responses)
    policy = RetryPolicy(attempts=attempts, max_wait_seconds=5)
    with sync_client(server, retry=policy) as client, pytest.raises(RequestFailed) as info:
        client.classify(PNG)
    assert len(server.requests) == sent
    assert info.value.status_code == responses[-1].status_code
    assert info.value.error_type == (error_type or "invalid_budget")


def test_async_client_retries_too() -> None:
    server = Server(refused(503, "1"), httpx.Response(200, json={"results": [ANSWER, ANSWER]}))

    async def main(make: Callable[..., AsyncClient]) -> int:
        async with make() as client:
            return len(await client.classify_many([PNG, PNG], bit_widths=4))

    started = time.monotonic()
    count = asyncio.run(
        main(lambda: AsyncClient("http://abn", transport=httpx.MockTransport(server)))
    )
    assert count == 2 and time.monotonic() - started >= 1.0
    assert server.requests[-1].headers["X-Bit-Widths"] == "4"


def test_refuses_what_cannot_be_sent() -> None:
    with sync_client(Server()) as client, pytest.raises(ValueError, match="at least one"):
        client.classify_many([])
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
