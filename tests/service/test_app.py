"""Every route and error of CONTRACT.md through httpx against the ASGI app (in process)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.app import create_app
from service.model import ModelLoadError, ServedModel
from service.settings import Settings

from .helpers import (
    METRIC_NAMES,
    Scrape,
    encode,
    family_names,
    fmnist_like,
    png,
    png_header_only,
    serving,
    wait_phase,
)

pytestmark = pytest.mark.timeout(120)  # a hang fails fast, not after 10 minutes

PNG = {"Content-Type": "image/png"}
ERROR_KEYS = {"error", "error_type"}
# A classify answer's fields (docs/api.md): the OpenAPI schema declares them, answers hold them.
CLASSIFY_FIELDS = {
    "id",
    "model",
    "label",
    "class_name",
    "confidence",
    "top_k",
    "bit_widths",
    "first_pass_bit_widths",
    "bitops",
    "budget",
    "policy",
    "latency_ms",
}


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def assert_error(response: httpx.Response, status: int, error_type: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= ERROR_KEYS and isinstance(body["error"], str), body
    if error_type is not None:
        assert body["error_type"] == error_type, body
    assert response.headers["x-request-id"]
    return body["error"]


class GatedModel:
    """The real model behind a gate: ``infer`` waits for ``gate`` and records batch sizes."""

    def __init__(self, model: ServedModel) -> None:
        self._model = model
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def warm_up(self, max_batch_size: int) -> None:
        self._model.warm_up(max_batch_size)

    def infer(self, images: torch.Tensor, budgets: torch.Tensor, pinned: object) -> object:
        self.batches.append(len(budgets))
        assert self.gate.wait(20)
        return self._model.infer(images, budgets, pinned)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.005)


def gated_app(served_model: ServedModel, tiny_model_dir: Path, **kw: object):
    gated = GatedModel(served_model)
    # a held batch must hold a model thread, not the event loop that answers
    kw = {"batch_execution": "thread", **kw}
    settings = Settings(model_dir=tiny_model_dir, device="cpu", **kw)
    return create_app(settings, model=gated), gated  # type: ignore[arg-type]


# -- health, readiness, model card, openapi -------------------------------------------------
def test_health_readiness_model_card_and_openapi(
    make_app: Callable[..., FastAPI], served_model: ServedModel
) -> None:
    async def body() -> None:
        async with serving(make_app()) as client:
            for path in ("/healthz", "/v2/health/live"):
                r = await client.get(path)
                assert r.status_code == 200 and r.json() == {"status": "ok"}
            for path in ("/readyz", "/v2/health/ready"):
                r = await client.get(path)
                assert r.status_code == 200 and r.json()["status"] == "ready"

            card = (await client.get("/v1/model")).json()
            table = served_model.table
            manifest = served_model.directory.manifest
            assert card["name"] == manifest["name"] and card["version"] == manifest["version"]
            assert card["classes"] == manifest["classes"]
            assert card["input"] | {} == manifest["input"]
            assert card["layers"] == [
                {"name": n, "macs": m}
                for n, m in zip(table.layer_names, table.layer_macs, strict=True)
            ]
            assert card["bit_candidates"] == list(table.bit_candidates)
            assert card["min_bitops"] == table.min_bitops
            assert card["max_bitops"] == table.max_bitops
            assert card["accuracy"]["static"] == manifest["accuracy"]["static"]
            assert card["accuracy"]["adaptive"] == manifest["accuracy"]["adaptive"]
            uniform = {tuple(row["bit_widths"]) for row in card["accuracy"]["static"]}
            for b in card["bit_candidates"]:
                assert tuple([b] * len(card["layers"])) in uniform

            spec = (await client.get("/openapi.json")).json()
            paths = spec["paths"]
            assert set(paths) >= {
                "/classify",
                "/healthz",
                "/readyz",
                "/v2/health/live",
                "/v2/health/ready",
                "/metrics",
                "/v1/model",
                "/feedback",
            }
            classify = paths["/classify"]["post"]
            for code in ("200", "400", "401", "413", "415", "422", "429", "503", "504"):
                assert code in classify["responses"], code
            assert classify["responses"]["422"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }
            assert "image/png" in classify["requestBody"]["content"]
            assert "multipart/form-data" in classify["requestBody"]["content"]
            header_names = {p["name"] for p in classify["parameters"] if p["in"] == "header"}
            assert header_names >= {"X-BitOps-Budget", "X-Bit-Widths", "X-Request-ID"}
            assert set(classify["responses"]["200"]["headers"]) >= {
                "X-Request-ID",
                "X-BitOps-Used",
                "X-BitOps-Budget",
            }
            assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
            fields = spec["components"]["schemas"]["ClassifyResponse"]["properties"]
            assert set(fields) == CLASSIFY_FIELDS
            for route in ("/healthz", "/readyz", "/v1/model", "/feedback"):
                op = next(iter(paths[route].values()))
                assert "$ref" in json.dumps(op["responses"]["200"]), route

            r = await client.get("/nope")
            assert_error(r, 404, "not_found")
            r = await client.delete("/classify")
            assert_error(r, 405, "method_not_allowed")

    run(body())


# -- classify: the happy paths --------------------------------------------------------------
def test_classify_answers_as_the_contract_says(
    make_app: Callable[..., FastAPI], served_model: ServedModel
) -> None:
    model = served_model
    budget = (model.min_bitops + model.max_bitops) / 2

    async def body() -> None:
        async with serving(make_app()) as client:
            r = await client.post(
                "/classify", content=png(1), headers={**PNG, "X-BitOps-Budget": str(budget)}
            )
            assert r.status_code == 200, r.text
            out = r.json()
            assert set(out) == CLASSIFY_FIELDS
            assert out["id"] == r.headers["x-request-id"] and len(out["id"]) >= 16
            assert out["model"] == {"name": model.name, "version": model.version}
            assert out["class_name"] == model.classes[out["label"]]
            assert out["policy"] == "adaptive"
            assert len(out["bit_widths"]) == model.num_layers
            assert set(out["bit_widths"]) <= set(model.bit_candidates)
            assert out["bitops"] == model.table.cost(out["bit_widths"]) <= budget
            assert out["first_pass_bit_widths"] is None  # this policy has no last decision
            assert out["budget"] == budget
            assert float(r.headers["x-bitops-used"]) == out["bitops"]
            assert float(r.headers["x-bitops-budget"]) == budget
            top = out["top_k"]
            assert len(top) == 5 and top[0]["label"] == out["label"]
            assert top[0]["probability"] == out["confidence"]
            assert [t["probability"] for t in top] == sorted(
                (t["probability"] for t in top), reverse=True
            )
            assert all(t["class_name"] == model.classes[t["label"]] for t in top)
            assert 0 < out["latency_ms"] < 60_000

            # the request id is echoed
            r = await client.post(
                "/classify", content=png(1), headers={**PNG, "X-Request-ID": "abc-123"}
            )
            assert r.json()["id"] == "abc-123" == r.headers["x-request-id"]
            for bad in (b"x" * 129, b"has space", "é".encode()):
                r = await client.post(
                    "/classify", content=png(1), headers={**PNG, "X-Request-ID": bad}
                )
                assert_error(r, 422, "invalid_request_id")
            text = (await client.get("/metrics")).text
            assert (
                Scrape(text).value("abn_requests_total", route="/classify", status_code="422") == 3
            )

            # no budget: the dearest configuration's cost; suffixes; above the maximum
            r = await client.post("/classify", content=png(2), headers=PNG)
            assert r.json()["budget"] == model.max_bitops
            r = await client.post(
                "/classify", content=png(2), headers={**PNG, "X-BitOps-Budget": "10G"}
            )
            assert r.json()["budget"] == 1e10 and r.json()["bitops"] <= model.max_bitops
            r = await client.post(
                "/classify",
                content=png(2),
                headers={**PNG, "X-BitOps-Budget": f"{model.min_bitops / 1e6 + 0.001:.3f}M"},
            )
            assert r.status_code == 200 and r.json()["bitops"] <= r.json()["budget"]

    run(body())


def test_every_image_format_and_multipart(make_app: Callable[..., FastAPI]) -> None:
    gray = fmnist_like(3)
    wide = np.tile(gray, (1, 4))  # 28 x 112, padded to a square
    frames = [Image.fromarray(gray), Image.fromarray(255 - gray)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 128)])
    bodies = {
        "image/png": [encode(gray), encode(rgba), encode(gray, mode="P"), encode(gray, mode="1")],
        "image/jpeg": [encode(gray, "JPEG"), encode(gray, "JPEG", mode="RGB")],
        "image/webp": [encode(gray, "WEBP", mode="RGB")],
        "image/bmp": [encode(gray, "BMP"), encode(wide, "BMP")],
        "image/gif": [gif.getvalue()],
    }

    async def body() -> None:
        async with serving(make_app()) as client:
            for ctype, images in bodies.items():
                for data in images:
                    r = await client.post(
                        "/classify", content=data, headers={"Content-Type": ctype}
                    )
                    assert r.status_code == 200, (ctype, r.text)
            plain = (await client.post("/classify", content=png(4), headers=PNG)).json()
            r = await client.post(
                "/classify",
                files={"image": ("x.png", png(4), "application/octet-stream")},
                data={"note": "extra fields are ignored"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["label"] == plain["label"]
            assert r.json()["bit_widths"] == plain["bit_widths"]
            # Content-Type parameters and case do not matter
            r = await client.post(
                "/classify", content=png(4), headers={"Content-Type": "IMAGE/PNG; q=1"}
            )
            assert r.status_code == 200

    run(body())


def test_pinned_bit_widths(make_app: Callable[..., FastAPI], served_model: ServedModel) -> None:
    model = served_model
    n = model.num_layers
    cands = model.table.bit_candidates
    mixed = ([max(cands), min(cands), *cands[1:-1]] * n)[:n]
    allowed = ", ".join(map(str, cands))

    async def body() -> None:
        async with serving(make_app()) as client:
            r = await client.post("/classify", content=png(5), headers={**PNG, "X-Bit-Widths": "4"})
            out = r.json()
            assert out["policy"] == "pinned" and out["bit_widths"] == [4] * n
            assert out["bitops"] == model.table.cost([4] * n)
            header = ",".join(map(str, mixed))
            r = await client.post(
                "/classify",
                content=png(5),
                headers={**PNG, "X-Bit-Widths": header, "X-BitOps-Budget": "1G"},
            )
            assert r.json()["bit_widths"] == mixed
            # it must fit the budget
            cost = model.table.cost([8] * n)
            r = await client.post(
                "/classify",
                content=png(5),
                headers={**PNG, "X-Bit-Widths": "8", "X-BitOps-Budget": str(cost - 1)},
            )
            msg = assert_error(r, 422, "bit_widths_over_budget")
            assert f"{model.min_bitops:.6g}" in msg
            # unknown widths and wrong counts name the allowed values
            for bad in ("7", "4,4", ",".join(["4"] * (n + 1)), "four", "4,,4", "0"):
                r = await client.post(
                    "/classify", content=png(5), headers={**PNG, "X-Bit-Widths": bad}
                )
                msg = assert_error(r, 422, "invalid_bit_widths")
                assert allowed in msg and str(n) in msg

    run(body())


def test_default_budget_setting(
    make_app: Callable[..., FastAPI], served_model: ServedModel
) -> None:
    model = served_model
    default = model.min_bitops * 1.5

    async def body() -> None:
        async with serving(make_app(default_budget=f"{default / 1e6}M")) as client:
            r = await client.post("/classify", content=png(6), headers=PNG)
            assert r.json()["budget"] == pytest.approx(default)
            assert r.json()["bitops"] <= r.json()["budget"]
            # a pinned configuration above the default budget, without a budget header
            r = await client.post("/classify", content=png(6), headers={**PNG, "X-Bit-Widths": "8"})
            assert "default budget" in assert_error(r, 422, "bit_widths_over_budget")

    run(body())


# -- classify: every error -------------------------------------------------------------------
def test_budget_errors_state_the_feasible_range(
    make_app: Callable[..., FastAPI], served_model: ServedModel
) -> None:
    low, high = served_model.min_bitops, served_model.max_bitops

    async def body() -> None:
        async with serving(make_app()) as client:
            for bad in (
                "abc",
                "NaN",
                "inf",
                "1e400",
                "-0",
                "0",
                "-5",
                "0x10",
                "25MM",
                "",
                "\u0663",
            ):
                r = await client.post(
                    "/classify", content=png(7), headers={**PNG, "X-BitOps-Budget": bad.encode()}
                )
                msg = assert_error(r, 422, "invalid_budget")
                assert f"{low:.6g}" in msg and f"{high:.6g}" in msg, msg
            r = await client.post(
                "/classify", content=png(7), headers={**PNG, "X-BitOps-Budget": str(low * 0.99)}
            )
            assert "below the cheapest" in assert_error(r, 422, "invalid_budget")
            r = await client.post(
                "/classify",
                content=png(7),
                headers=[
                    ("Content-Type", "image/png"),
                    ("X-BitOps-Budget", "1G"),
                    ("X-BitOps-Budget", "2G"),
                ],
            )
            assert_error(r, 422, "invalid_budget")

    run(body())


def test_400_415_413(make_app: Callable[..., FastAPI]) -> None:
    good = png(8)

    async def chunks() -> object:
        for _ in range(10):
            yield b"\x00" * 500

    async def body() -> None:
        async with serving(make_app()) as client:
            for data in (b"", b"not an image", good[: len(good) // 2], b"GIF89a" + b"\x00" * 20):
                r = await client.post("/classify", content=data, headers=PNG)
                assert_error(r, 400, "invalid_image")
            r = await client.post("/classify", files={"other": ("x.png", good, "image/png")})
            assert "'image'" in assert_error(r, 400, "invalid_image")
            r = await client.post(
                "/classify", data={"image": "text, not a file"}, files={"x": ("x", b"1")}
            )
            assert_error(r, 400, "invalid_image")
            r = await client.post(
                "/classify",
                content=b"--xx\r\nbroken",
                headers={"Content-Type": "multipart/form-data; boundary=xx"},
            )
            assert_error(r, 400)
            for ctype in (
                "text/plain",
                "application/json",
                "image/tiff",
                "application/octet-stream",
            ):
                r = await client.post("/classify", content=good, headers={"Content-Type": ctype})
                msg = assert_error(r, 415, "unsupported_media_type")
                assert "image/png" in msg and "multipart/form-data" in msg
            r = await client.post("/classify", content=good)
            assert_error(r, 415)
            # a decompression bomb is refused from its header (default limit)
            r = await client.post(
                "/classify", content=png_header_only(100_000, 100_000), headers=PNG
            )
            assert "pixels" in assert_error(r, 413, "payload_too_large")

        app = make_app(max_body_bytes=4000, max_image_pixels=10_000)
        async with serving(app) as client:
            noise = encode(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
            assert len(noise) > 4000
            r = await client.post("/classify", content=noise, headers=PNG)
            assert "4000 bytes" in assert_error(r, 413, "payload_too_large")
            r = await client.post("/classify", files={"image": ("n.png", noise, "image/png")})
            assert_error(r, 413, "payload_too_large")
            r = await client.post("/classify", content=chunks(), headers=PNG)  # no Content-Length
            assert_error(r, 413, "payload_too_large")
            big = encode(np.zeros((101, 100), dtype=np.uint8))  # small file, too many pixels
            assert len(big) < 4000
            r = await client.post("/classify", content=big, headers=PNG)
            assert "10000 pixels" in assert_error(r, 413, "payload_too_large")
            thin = encode(np.zeros((1, 200), dtype=np.uint8))  # 200 px, padded to 200 x 200
            r = await client.post("/classify", content=thin, headers=PNG)
            assert "square" in assert_error(r, 413, "payload_too_large")
            r = await client.post("/classify", content=png(8), headers=PNG)
            assert r.status_code == 200

    run(body())


def test_api_key(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app(api_key="s3cret-key")) as client:
            for auth in (
                None,
                "Bearer wrong",
                "Basic s3cret-key",
                "Bearer",
                "s3cret-key",
                "Bearer s3cret-keyy",
            ):
                headers = dict(PNG) if auth is None else {**PNG, "Authorization": auth}
                r = await client.post("/classify", content=png(9), headers=headers)
                assert_error(r, 401, "unauthorized")
                assert r.headers["www-authenticate"].startswith("Bearer")
                r = await client.post("/feedback", json={"id": "x", "label": 1}, headers=headers)
                assert_error(r, 401, "unauthorized")
            r = await client.post(
                "/classify", content=png(9), headers={**PNG, "Authorization": "bearer s3cret-key"}
            )
            assert r.status_code == 200
            for path in ("/healthz", "/readyz", "/metrics", "/v1/model", "/v2/health/ready"):
                assert (await client.get(path)).status_code == 200, path

    run(body())


def test_429_when_the_queue_is_full(served_model: ServedModel, tiny_model_dir: Path) -> None:
    app, gated = gated_app(
        served_model, tiny_model_dir, max_batch_size=1, max_queue_size=1, max_queue_delay_seconds=0
    )

    async def body() -> None:
        async with serving(app) as client:
            engine = app.state.service.engine
            gated.gate.clear()
            try:
                running = asyncio.create_task(client.post("/classify", content=png(0), headers=PNG))
                await until(lambda: len(gated.batches) == 1)  # in the model, held there
                queued = asyncio.create_task(client.post("/classify", content=png(1), headers=PNG))
                await until(lambda: engine.queued == 1)  # the one place in the queue is taken
                for i in range(3):
                    r = await client.post("/classify", content=png(i), headers=PNG)
                    assert_error(r, 429, "queue_full")
                    assert int(r.headers["retry-after"]) >= 1
            finally:
                gated.gate.set()
            assert (await running).status_code == 200
            assert (await queued).status_code == 200

    run(body())


def test_504_past_the_deadline(served_model: ServedModel, tiny_model_dir: Path) -> None:
    app, gated = gated_app(
        served_model, tiny_model_dir, max_batch_size=1, request_timeout_seconds=0.3
    )

    async def body() -> None:
        async with serving(app) as client:
            gated.gate.clear()
            try:
                first = asyncio.create_task(client.post("/classify", content=png(1), headers=PNG))
                await until(lambda: len(gated.batches) == 1)
                second = await client.post("/classify", content=png(2), headers=PNG)
                assert_error(second, 504, "deadline_exceeded")
                assert_error(await first, 504, "deadline_exceeded")
            finally:
                gated.gate.set()
            await until(lambda: not app.state.service.engine.busy)
            assert gated.batches == [1]  # the queued request never reached the model
            r = await client.post("/classify", content=png(3), headers=PNG)
            assert r.status_code == 200
            scrape = Scrape((await client.get("/metrics")).text)
            assert scrape.value("abn_requests_total", route="/classify", status_code="504") == 2
            assert scrape.value("abn_pending_requests") == 0

    run(body())


def test_503_while_loading_then_ready_then_draining(
    served_model: ServedModel, tiny_model_dir: Path
) -> None:
    release = threading.Event()

    def slow_loader(_: Settings) -> ServedModel:
        assert release.wait(20)
        return served_model

    settings = Settings(model_dir=tiny_model_dir, device="cpu")
    app = create_app(settings, loader=slow_loader)

    async def body() -> None:
        async with serving(app, ready=False) as client:
            for path in ("/readyz", "/v2/health/ready"):
                r = await client.get(path)
                assert_error(r, 503, "not_ready")
                assert r.json()["status"] == "loading"
            assert_error(
                await client.post("/classify", content=png(1), headers=PNG), 503, "not_ready"
            )
            assert_error(await client.get("/v1/model"), 503, "not_ready")
            assert (await client.get("/healthz")).status_code == 200
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and "abn_requests_total" in metrics.text
            release.set()
            assert await wait_phase(app) == "ready"
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/classify", content=png(1), headers=PNG)).status_code == 200
            app.state.service.begin_draining()  # what SIGTERM does first
            r = await client.get("/readyz")
            assert_error(r, 503, "shutting_down")
            assert r.json()["status"] == "draining"
            r = await client.post("/classify", content=png(1), headers=PNG)
            assert_error(r, 503, "shutting_down")
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/v1/model")).status_code == 200

    run(body())


def test_a_model_that_fails_to_load(tiny_model_dir: Path) -> None:
    reasons: list[str] = []

    def broken(_: Settings) -> ServedModel:
        raise ModelLoadError("sha256 mismatch in supernet.safetensors")

    settings = Settings(model_dir=tiny_model_dir, device="cpu")
    app = create_app(settings, loader=broken, on_fatal=reasons.append)

    async def body() -> None:
        async with serving(app, ready=False) as client:
            assert await wait_phase(app) == "failed"
            r = await client.get("/readyz")
            assert "sha256" in assert_error(r, 503, "not_ready")
            assert r.json()["status"] == "failed"

    run(body())
    assert reasons == ["sha256 mismatch in supernet.safetensors"]


# -- feedback -------------------------------------------------------------------------------
def test_feedback(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app(feedback_capacity=3)) as client:
            ids = []
            for i in range(3):
                r = await client.post(
                    "/classify", content=png(i), headers={**PNG, "X-Request-ID": f"req-{i}"}
                )
                ids.append((f"req-{i}", r.json()["label"]))
            before = Scrape((await client.get("/metrics")).text)
            (rid, label), (rid2, label2) = ids[0], ids[1]
            r = await client.post("/feedback", json={"id": rid, "label": label})
            assert r.status_code == 200
            assert r.json() == {
                "id": rid,
                "label": label,
                "predicted_label": label,
                "outcome": "correct",
            }
            r = await client.post("/feedback", json={"id": rid, "label": label})
            assert_error(r, 409)
            wrong = (label2 + 1) % 10
            r = await client.post("/feedback", json={"id": rid2, "label": wrong})
            assert r.json()["outcome"] == "incorrect"
            after = Scrape((await client.get("/metrics")).text)
            for outcome in ("correct", "incorrect"):
                delta = after.value("abn_feedback_total", outcome=outcome) - before.value(
                    "abn_feedback_total", outcome=outcome
                )
                assert delta == 1, outcome
            assert_error(
                await client.post("/feedback", json={"id": "nope", "label": 1}), 404, "not_found"
            )
            for bad in (10, -1):
                r = await client.post("/feedback", json={"id": ids[2][0], "label": bad})
                assert "0 to 9" in assert_error(r, 422, "invalid_label")
            for payload in (
                {"id": ids[2][0], "label": "3"},
                {"id": ids[2][0]},
                {"label": 1},
                [1],
                {"id": "", "label": 1},
            ):
                assert_error(await client.post("/feedback", json=payload), 422)
            r = await client.post(
                "/feedback", content=b"{not json", headers={"Content-Type": "application/json"}
            )
            assert_error(r, 422)
            # bounded memory: the oldest id is forgotten once capacity is exceeded
            for extra in ("req-9", "req-10", "req-11"):
                await client.post(
                    "/classify", content=png(9), headers={**PNG, "X-Request-ID": extra}
                )
            assert_error(await client.post("/feedback", json={"id": ids[2][0], "label": 1}), 404)

        async with serving(make_app(feedback_ttl_seconds=0.05)) as client:
            r = await client.post("/classify", content=png(1), headers=PNG)
            await asyncio.sleep(0.1)
            r = await client.post("/feedback", json={"id": r.json()["id"], "label": 1})
            assert "older than" in assert_error(r, 404)

    run(body())


# -- metrics --------------------------------------------------------------------------------
def test_metrics_move_by_the_right_amounts(
    make_app: Callable[..., FastAPI], served_model: ServedModel
) -> None:
    model = served_model
    n_layers = model.num_layers
    rng = np.random.default_rng(5)
    budgets = rng.uniform(model.min_bitops, model.max_bitops * 1.1, 14)

    async def body() -> None:
        async with serving(make_app(max_queue_delay_seconds=0.05)) as client:
            text = (await client.get("/metrics")).text
            assert family_names(text) >= METRIC_NAMES, METRIC_NAMES - family_names(text)
            before = Scrape(text)
            calls = [
                client.post(
                    "/classify", content=png(i), headers={**PNG, "X-BitOps-Budget": repr(float(b))}
                )
                for i, b in enumerate(budgets)
            ]
            calls.append(
                client.post("/classify", content=png(1), headers={**PNG, "X-Bit-Widths": "4"})
            )
            calls.append(client.post("/classify", content=b"junk", headers=PNG))
            responses = await asyncio.gather(*calls)
            ok = [r.json() for r in responses if r.status_code == 200]
            n = len(ok)
            assert n == len(budgets) + 1
            after = Scrape((await client.get("/metrics")).text)

            def delta(name: str, **labels: str) -> float:
                return after.value(name, **labels) - before.value(name, **labels)

            assert delta("abn_requests_total", route="/classify", status_code="200") == n
            assert delta("abn_requests_total", route="/classify", status_code="400") == 1
            assert delta("abn_requests_total", route="/metrics", status_code="200") == 1
            assert delta("abn_request_duration_seconds_count", route="/classify") == n + 1
            assert delta("abn_layer_width_selections_total") == n * n_layers
            assert delta("abn_layer_bits_total") == n * n_layers  # deprecated, still counted
            for layer_index, layer in enumerate(model.layer_names):
                for bits in model.bit_candidates:
                    chosen = sum(1 for o in ok if o["bit_widths"][layer_index] == bits)
                    width = {"layer": layer, "width": str(bits)}
                    assert delta("abn_layer_width_selections_total", **width) == chosen
                    assert delta("abn_layer_bits_total", layer=layer, bits=str(bits)) == chosen
            for name in (
                "abn_bitops_used_count",
                "abn_bitops_budget_count",
                "abn_budget_utilization_ratio_count",
                "abn_prediction_confidence_count",
                "abn_expected_accuracy_count",
                "abn_queue_duration_seconds_count",
            ):
                assert delta(name) == n, name
            assert delta("abn_batch_size_sum") == n
            assert delta("abn_inference_duration_seconds_count") == delta("abn_batch_size_count")
            assert delta("abn_batch_size_count") < n  # the concurrent requests were batched
            assert delta("abn_bitops_used_sum") == pytest.approx(sum(o["bitops"] for o in ok))
            assert delta("abn_bitops_budget_sum") == pytest.approx(sum(o["budget"] for o in ok))
            assert after.value("abn_pending_requests") == 0
            info = after.series("abn_model_info")
            assert info == [
                ({"model_name": model.name, "model_version": model.version, "device": "cpu"}, 1.0)
            ]
            edges = [float(ls["le"]) for ls, _ in after.series("abn_bitops_used_bucket")]
            assert edges[0] == model.min_bitops and edges[-2] == model.max_bitops
            ratio_edges = [
                float(ls["le"]) for ls, _ in after.series("abn_budget_utilization_ratio_bucket")
            ]
            assert ratio_edges[-2] == 1.0 and ratio_edges[0] > 0
            # the expected accuracy comes from the model card's tables
            expected = [
                model.accuracy.expected(
                    pinned=o["policy"] == "pinned",
                    budget=o["budget"],
                    widths=o["bit_widths"],
                    bitops=o["bitops"],
                )
                for o in ok
            ]
            assert delta("abn_expected_accuracy_sum") == pytest.approx(sum(expected))
            static = {tuple(r["bit_widths"]): r["accuracy"] for r in model.accuracy.static}
            assert (
                model.accuracy.expected(pinned=True, budget=1e12, widths=[4] * n_layers, bitops=0)
                == static[(4,) * n_layers]
            )

    run(body())


# -- nothing produces a 500 -----------------------------------------------------------------
HEADER_BYTES = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F))


def test_no_input_produces_a_500(make_app: Callable[..., FastAPI]) -> None:
    good = png(11)
    bodies = st.one_of(
        st.binary(max_size=300),
        st.sampled_from([good, good[:50], png_header_only(70_000, 70_000), b"GIF89a"]),
        st.binary(max_size=200).map(lambda b: good[:40] + b),
    )
    ctypes = st.sampled_from(
        [
            "image/png",
            "image/gif",
            "image/jpeg",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
        ]
    )
    optional = st.one_of(st.none(), HEADER_BYTES, st.sampled_from([b"4", b"8,8", b"1G", b"50M"]))

    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        client = runner.run(stack.enter_async_context(serving(make_app())))

        @given(bodies, ctypes, optional, optional, optional)
        @settings(
            max_examples=120,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        def check(
            body: bytes, ctype: str, budget: bytes | None, widths: bytes | None, rid: bytes | None
        ) -> None:
            headers = [("Content-Type", ctype.encode())]
            for name, value in (
                ("X-BitOps-Budget", budget),
                ("X-Bit-Widths", widths),
                ("X-Request-ID", rid),
            ):
                if value is not None:
                    headers.append((name, value))
            r = runner.run(client.post("/classify", content=body, headers=headers))
            assert r.status_code in {200, 400, 413, 415, 422}, (r.status_code, r.text)
            if r.status_code != 200:
                assert set(r.json()) == ERROR_KEYS

        check()

        json_values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["id", "label", "x"]), inner, max_size=3)
            ),
            max_leaves=8,
        )

        @given(json_values)
        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        def check_feedback(payload: object) -> None:
            r = runner.run(
                client.post(
                    "/feedback",
                    content=json.dumps(payload),
                    headers={"Content-Type": "application/json"},
                )
            )
            assert r.status_code in {404, 422}, (r.status_code, r.text)
            assert set(r.json()) == ERROR_KEYS

        check_feedback()
        runner.run(stack.aclose())


def test_what_startup_loaded_is_frozen_out_of_the_collector_once_ready(
    served_model: ServedModel, tiny_model_dir: Path
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    app = create_app(
        Settings(model_dir=tiny_model_dir, device="cpu"), loader=lambda _: served_model
    )

    async def body() -> None:
        async with serving(app, ready=False) as client:
            assert await wait_phase(app) == "ready"
            assert (await client.get("/readyz")).status_code == 200
            assert gc.get_freeze_count() > 0

    run(body())
