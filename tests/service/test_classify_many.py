"""Several images in one ``POST /classify`` (multipart ``image`` fields), in process: each image
is answered as it would be alone, under the per-image budget, with its own id for
``/feedback``; the request is admitted and answered whole; the metrics count images."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from .helpers import Scrape, png, serving

pytestmark = pytest.mark.timeout(120)


def files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]


def call(make_app: Callable[..., FastAPI], send: Callable[..., Any], **settings: object) -> Any:
    async def main() -> Any:
        async with serving(make_app(**settings)) as client:
            return await send(client)

    return asyncio.run(main())


def test_each_image_is_answered_as_alone(make_app: Callable[..., FastAPI]) -> None:
    images = [png(i) for i in range(4)]
    headers = {"X-BitOps-Budget": "60M"}

    async def send(c: httpx.AsyncClient) -> tuple[list[dict], httpx.Response, Scrape, Scrape, list]:
        layers = [layer["name"] for layer in (await c.get("/v1/model")).json()["layers"]]
        alone = [
            (await c.post("/classify", content=i, headers={**headers, "Content-Type": "image/png"}))
            for i in images
        ]
        before = Scrape((await c.get("/metrics")).text)
        many = await c.post("/classify", files=files(*images), headers=headers)
        after = Scrape((await c.get("/metrics")).text)
        return [a.json() for a in alone], many, before, after, layers

    alone, many, before, after, layers = call(make_app, send)
    assert many.status_code == 200, many.text
    body = many.json()
    assert set(body) == {"id", "model", "results"} and body["id"] == many.headers["x-request-id"]
    results = body["results"]
    keys = ("label", "bit_widths", "first_pass_bit_widths", "bitops", "budget", "policy")
    assert [{k: r[k] for k in keys} for r in results] == [{k: a[k] for k in keys} for a in alone]
    assert all(r["bitops"] <= r["budget"] == 60e6 for r in results)
    assert len({r["id"] for r in results}) == 4  # one id each, for /feedback
    assert float(many.headers["x-bitops-used"]) == pytest.approx(sum(r["bitops"] for r in results))
    assert many.headers["x-bitops-budget"] == "60000000"
    count = "abn_bitops_used_count"
    assert after.value(count) - before.value(count) == 4  # images, not requests
    for index, layer in enumerate(layers):  # each image's width, counted by its route
        for width in {r["bit_widths"][index] for r in results}:
            chosen = sum(r["bit_widths"][index] == width for r in results)
            selections = {"layer": layer, "width": str(width)}
            name = "abn_layer_width_selections_total"
            assert after.value(name, **selections) - before.value(name, **selections) == chosen
    ok = {"route": "/classify", "status_code": "200"}
    assert after.value("abn_requests_total", **ok) - before.value("abn_requests_total", **ok) == 1


def test_each_image_id_takes_feedback(make_app: Callable[..., FastAPI]) -> None:
    """Generated ids are signed per image; a client's X-Request-ID gets -0, -1, ..."""

    async def send(c: httpx.AsyncClient) -> tuple[dict, dict, list[int]]:
        generated = (await c.post("/classify", files=files(png(1), png(2)))).json()
        mine = (
            await c.post("/classify", files=files(png(1), png(2)), headers={"X-Request-ID": "r"})
        ).json()
        statuses = []
        for result in generated["results"] + mine["results"]:
            answer = await c.post("/feedback", json={"id": result["id"], "label": 0})
            statuses.append(answer.status_code)
        return generated, mine, statuses

    generated, mine, statuses = call(make_app, send)
    assert [r["id"] for r in mine["results"]] == ["r-0", "r-1"] and mine["id"] == "r"
    assert all(r["id"].count(".") == 3 for r in generated["results"])  # signed: hex.label.exp.mac
    assert statuses == [200, 200, 200, 200]


def test_pinned_widths_apply_to_every_image(make_app: Callable[..., FastAPI]) -> None:
    async def send(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/classify", files=files(png(1), png(2)), headers={"X-Bit-Widths": "3"})

    results = call(make_app, send).json()["results"]
    assert [r["bit_widths"] for r in results] == [[3] * 8, [3] * 8]
    assert {r["policy"] for r in results} == {"pinned"}


def test_limits_and_a_bad_image_refuse_the_request(make_app: Callable[..., FastAPI]) -> None:
    async def send(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await c.post("/classify", files=files(png(1), png(2), png(3))),  # over the count
            await c.post("/classify", files=files(png(1), b"not an image")),
            await c.post(
                "/classify", files=files(png(1), png(2)), headers={"X-BitOps-Budget": "1"}
            ),
        ]

    too_many, corrupt, budget = call(make_app, send, max_images_per_request=2)
    assert too_many.status_code == 413 and "at most 2 images" in too_many.json()["error"]
    assert corrupt.status_code == 400 and corrupt.json()["error"].startswith("image #1 of 2")
    assert budget.status_code == 422 and budget.json()["error_type"] == "invalid_budget"


def test_the_queue_caps_the_count(make_app: Callable[..., FastAPI]) -> None:
    """A request with more images than the queue holds could never be admitted: 413 naming
    ABN_MAX_QUEUE_SIZE, not a 429 that would be retried for ever."""

    async def send(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/classify", files=files(png(1), png(2), png(3)))

    response = call(make_app, send, max_queue_size=2)
    assert response.status_code == 413 and "ABN_MAX_QUEUE_SIZE" in response.json()["error"]


def test_the_body_limit_is_the_whole_request(make_app: Callable[..., FastAPI]) -> None:
    image = png(1)

    async def send(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/classify", files=files(*[image] * 6))

    response = call(make_app, send, max_body_bytes=4 * len(image))
    assert response.status_code == 413 and response.json()["error_type"] == "payload_too_large"
