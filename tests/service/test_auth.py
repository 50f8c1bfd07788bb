"""``ABN_API_KEY``: who gets in, checked row by row, and how the key is compared.

test_app.py::test_api_key covers the basic refusals and the open routes in process, and the
``guarded`` server of test_server.py does the same over HTTP; this adds the edge cases (empty,
whitespace, case, prefixes, non-ASCII, the header twice) and proves the comparison goes through
:func:`hmac.compare_digest`, i.e. takes the same time however much of the key is right.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import service.auth
from service.app import create_app
from service.model import ServedModel
from service.settings import Settings
from tests.torch_threads import single_torch_thread

from .helpers import png, serving, serving_for_module

pytestmark = pytest.mark.timeout(120)

KEY = "s3cret-Key_0123"
PNG = {"Content-Type": "image/png"}

# (what the client sends as Authorization header(s), whether it gets in)
CASES: list[tuple[str, list[bytes], bool]] = [
    ("no header", [], False),
    ("empty", [b""], False),
    ("only spaces", [b"   "], False),
    ("scheme only", [b"Bearer"], False),
    ("scheme and a space", [b"Bearer "], False),
    ("no scheme", [KEY.encode()], False),
    ("Basic scheme", [b"Basic " + KEY.encode()], False),
    ("Token scheme", [b"Token " + KEY.encode()], False),
    ("wrong key", [b"Bearer wrong"], False),
    ("key in another case", [b"Bearer " + KEY.upper().encode()], False),
    ("a prefix of the key", [b"Bearer " + KEY[:-1].encode()], False),
    ("the key plus a character", [b"Bearer " + KEY.encode() + b"x"], False),
    ("the key twice", [b"Bearer " + KEY.encode() * 2], False),
    ("non-ASCII bytes", [b"Bearer " + "s3cr\u00e9t".encode()], False),
    ("the header twice, right one first", [b"Bearer " + KEY.encode(), b"Bearer no"], False),
    ("the header twice, both right", [b"Bearer " + KEY.encode()] * 2, False),
    ("right", [b"Bearer " + KEY.encode()], True),
    ("scheme in lower case", [b"bearer " + KEY.encode()], True),
    ("surrounding spaces", [b"  Bearer   " + KEY.encode() + b"  "], True),
]


@pytest.fixture(scope="module")
def guarded(
    served_model: ServedModel, tiny_model_dir: Path
) -> Iterator[tuple[asyncio.Runner, httpx.AsyncClient]]:
    """One app with ``ABN_API_KEY`` set, its lifespan running for the whole module."""
    app = create_app(
        Settings(model_dir=tiny_model_dir, device="cpu", api_key=KEY), model=served_model
    )
    # one thread for the whole module (conftest's one_torch_thread is per test)
    with single_torch_thread(), serving_for_module(app) as served:
        yield served


@pytest.mark.parametrize(("name", "sent", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_who_gets_in(
    name: str,
    sent: list[bytes],
    allowed: bool,
    guarded: tuple[asyncio.Runner, httpx.AsyncClient],
) -> None:
    runner, client = guarded
    auth = [("Authorization", value) for value in sent]

    async def body() -> tuple[httpx.Response, httpx.Response]:
        classify = await client.post("/classify", content=png(1), headers=[*PNG.items(), *auth])
        feedback = await client.post(
            "/feedback", json={"id": "unknown-id", "label": 1}, headers=auth
        )
        return classify, feedback

    classify, feedback = runner.run(body())
    if allowed:
        assert classify.status_code == 200, classify.text
        assert feedback.status_code == 404, feedback.text  # past auth: the id is unknown
        return
    for r in (classify, feedback):
        assert r.status_code == 401, r.text
        assert r.json()["error_type"] == "unauthorized" and set(r.json()) == {
            "error",
            "error_type",
        }
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert KEY not in r.text  # the key is never echoed


def test_health_readiness_metrics_and_the_model_card_stay_open(
    guarded: tuple[asyncio.Runner, httpx.AsyncClient],
) -> None:
    runner, client = guarded

    async def body() -> dict[str, int]:
        paths = ("/healthz", "/v2/health/live", "/readyz", "/v2/health/ready", "/metrics")
        return {p: (await client.get(p)).status_code for p in (*paths, "/v1/model")}

    assert set(runner.run(body()).values()) == {200}


def test_the_key_is_compared_in_constant_time(
    guarded: tuple[asyncio.Runner, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every token that reaches the comparison goes through hmac.compare_digest (whose time
    does not depend on how many leading bytes match), and nothing else decides."""
    runner, client = guarded
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.auth.hmac, "compare_digest", spy)
    for token, status in ((KEY[:-1] + "X", 401), (KEY, 200)):
        r = runner.run(
            client.post(
                "/classify",
                content=png(2),
                headers={**PNG, "Authorization": f"Bearer {token}"},
            )
        )
        assert r.status_code == status, r.text
    assert calls == [((KEY[:-1] + "X").encode(), KEY.encode()), (KEY.encode(), KEY.encode())]


def test_no_key_means_no_auth(make_app: Callable[..., FastAPI]) -> None:
    """``ABN_API_KEY`` unset or empty: the routes are open and any Authorization is ignored."""

    async def body() -> list[int]:
        codes = []
        for api_key in (None, ""):
            async with serving(make_app(api_key=api_key)) as client:
                for auth in ({}, {"Authorization": "Bearer anything"}):
                    r = await client.post("/classify", content=png(3), headers={**PNG, **auth})
                    codes.append(r.status_code)
        return codes

    assert asyncio.run(body()) == [200] * 4
