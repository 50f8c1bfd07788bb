"""Logs: one access line per request, ABN_LOG_FORMAT (text, json), the request id in every line.

The app runs in process; its records are caught by the service's own handler
(:func:`service.logs.make_handler`, the one ``abn serve`` installs) writing to a buffer, so the
lines checked are the lines an operator would read. A real process is checked in
tests/deploy/test_real_server_output.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from service.logs import ACCESS_FIELDS, BASE_FIELDS, make_handler
from service.settings import Settings

from .helpers import asgi_post_scope, png, serving

pytestmark = pytest.mark.timeout(300)  # the first test may build the shared tiny model

PNG = {"Content-Type": "image/png"}


@contextlib.contextmanager
def captured(log_format: str) -> Iterator[io.StringIO]:
    """The service's handler on the root logger at INFO, into a buffer; removed after."""
    buffer = io.StringIO()
    handler = make_handler(log_format, buffer)  # type: ignore[arg-type]
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def access(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Access lines by request id, requiring one per id."""
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line["logger"] == "service.access":
            assert line["request_id"] not in out, f"two access lines for {line['request_id']}"
            out[line["request_id"]] = line
    return out


def test_one_json_access_line_per_request_with_fixed_keys(
    make_app: Callable[..., FastAPI],
) -> None:
    async def body() -> dict[str, Any]:
        async with serving(make_app()) as client:
            ok = await client.post(
                "/classify", content=png(3), headers={**PNG, "X-BitOps-Budget": "1G"}
            )
            bad = await client.post("/classify", content=b"junk", headers=PNG)
            budget_bad = await client.post(
                "/classify", content=png(3), headers={**PNG, "X-BitOps-Budget": "-1"}
            )
            health = await client.get("/healthz", headers={"X-Request-ID": "probe-1"})
            missing = await client.get("/nowhere%0Aforged line")
            return {"ok": ok, "bad": bad, "budget": budget_bad, "h": health, "m": missing}

    with captured("json") as buffer:
        responses = asyncio.run(body())
    lines = json_lines(buffer)  # every line is one JSON object
    for line in lines:
        expected = set(BASE_FIELDS) | (
            set(ACCESS_FIELDS) if line["logger"] == "service.access" else set()
        )
        assert set(line) == expected, line
    by_id = access(lines)
    ids = {name: r.headers["x-request-id"] for name, r in responses.items()}
    assert set(ids.values()) <= set(by_id)

    ok, answer = by_id[ids["ok"]], responses["ok"].json()
    assert (ok["method"], ok["route"], ok["path"], ok["status"]) == (
        "POST",
        "/classify",
        "/classify",
        200,
    )
    assert ok["budget"] == answer["budget"] and ok["bitops"] == answer["bitops"]
    assert ok["latency_ms"] > 0 and ok["level"] == "INFO"
    assert ok["time"].endswith("Z")

    bad = by_id[ids["bad"]]
    assert bad["status"] == 400 and bad["bitops"] is None and bad["budget"] is not None
    refused = by_id[ids["budget"]]
    assert refused["status"] == 422 and refused["budget"] is None and refused["bitops"] is None
    health = by_id["probe-1"]
    assert (health["route"], health["status"], health["budget"]) == ("/healthz", 200, None)
    missing = by_id[ids["m"]]
    assert missing["status"] == 404 and missing["route"] == "unmatched"


def test_text_lines_carry_the_request_id_and_name_the_route_not_the_raw_path(
    make_app: Callable[..., FastAPI],
) -> None:
    async def body() -> None:
        async with serving(make_app()) as client:
            r = await client.post(
                "/classify",
                content=png(4),
                headers={**PNG, "X-Request-ID": "text-42", "X-Bit-Widths": "4"},
            )
            assert r.status_code == 200
            await client.get("/unknown%0AINFO%20service.access%20[admin]%20forged")

    with captured("text") as buffer:
        asyncio.run(body())
    text = buffer.getvalue().splitlines()
    mine = [line for line in text if "[text-42]" in line]
    assert len(mine) == 1 and " INFO service.access [text-42] POST /classify 200 " in mine[0]
    assert "budget=" in mine[0] and "bitops=" in mine[0]
    ours = [line for line in text if " httpx " not in line]  # the client's own log aside
    assert not any("forged" in line for line in ours)  # a client's path cannot forge a line
    assert any("GET unmatched 404" in line for line in text)


def test_every_line_a_request_causes_carries_its_id(make_app: Callable[..., FastAPI]) -> None:
    """A body that never completes: the 408 note and the access line both carry the id."""
    app = make_app(body_timeout_seconds=0.2)
    sent: list[dict[str, Any]] = []

    async def body() -> None:
        async with serving(app):
            first = True

            async def receive() -> dict[str, Any]:
                nonlocal first
                if first:
                    first = False
                    return {"type": "http.request", "body": b"\x89PNG", "more_body": True}
                await asyncio.sleep(3600)
                raise AssertionError("unreachable")

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = asgi_post_scope(
                "/classify",
                [
                    (b"content-type", b"image/png"),
                    (b"content-length", b"100"),
                    (b"x-request-id", b"slow-upload-7"),
                ],
            )
            await app(scope, receive, send)

    with captured("json") as buffer:
        asyncio.run(body())
    assert sent[0]["status"] == 408
    lines = [line for line in json_lines(buffer) if line["request_id"] == "slow-upload-7"]
    loggers = [line["logger"] for line in lines]
    assert "service.access" in loggers and "service" in loggers, lines
    assert any("did not arrive" in line["message"] for line in lines)
    unattributed = [
        line
        for line in json_lines(buffer)
        if line["request_id"] is None and "408" in line["message"]
    ]
    assert unattributed == []


def test_log_format_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().log_format == "text"
    monkeypatch.setenv("ABN_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("ABN_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings()


def test_access_log_can_be_turned_off(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app(access_log=False)) as client:
            assert (await client.get("/healthz")).status_code == 200

    with captured("json") as buffer:
        asyncio.run(body())
    assert [line for line in json_lines(buffer) if line["logger"] == "service.access"] == []
