"""Fault injection, in process: the model thread raising mid-batch, NaN and Inf in its outputs,
the decoder thread pool saturated, the event loop blocked for 200 ms.

Each time, every accepted request gets an answer; a 5xx only where the server truly failed, with
the request id in the log; and the app goes on serving afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from service.app import create_app
from service.model import BatchOutput, ServedModel
from service.settings import Settings

from .helpers import asgi_post_scope, encode, fmnist_like, png, serving

pytestmark = pytest.mark.timeout(180)  # the shared tiny model may be built in setup

PNG = {"Content-Type": "image/png"}
Fault = Callable[[int, torch.Tensor, Callable[[], BatchOutput]], BatchOutput]


class FaultyModel:
    """The shared tiny model, with ``fault(call, budgets, run)`` around each batch call the
    engine makes (warm-up runs the real model directly)."""

    def __init__(self, model: ServedModel, fault: Fault) -> None:
        self._model = model
        self._fault = fault
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def infer(
        self, images: torch.Tensor, budgets: torch.Tensor, pinned: torch.Tensor | None
    ) -> BatchOutput:
        self.calls += 1
        return self._fault(self.calls, budgets, lambda: self._model.infer(images, budgets, pinned))


def app_with(model: object, tiny_model_dir: Path, **overrides: object) -> object:
    settings = Settings(model_dir=tiny_model_dir, device="cpu", **overrides)
    return create_app(settings, model=model)  # type: ignore[arg-type]


async def classify_all(
    client: httpx.AsyncClient, budgets: list[float | None], image: bytes | None = None
) -> list[httpx.Response]:
    async def one(i: int, budget: float | None) -> httpx.Response:
        headers = {**PNG, "X-Request-ID": f"fault-{i}"}
        if budget is not None:
            headers["X-BitOps-Budget"] = repr(budget)
        return await client.post("/classify", content=image or png(i), headers=headers)

    return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(budgets))))


def test_the_model_raising_mid_batch_fails_that_batch_only(
    served_model: ServedModel, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def fault(call: int, budgets: torch.Tensor, run: Callable[[], BatchOutput]) -> BatchOutput:
        out = run()  # the work is done, then the thread fails before handing it back
        if call == 1:
            raise RuntimeError("injected: the model thread failed mid-batch")
        return out

    model = FaultyModel(served_model, fault)
    app = app_with(model, tiny_model_dir, max_batch_size=3, max_queue_delay_seconds=0.05)

    async def body() -> None:
        async with serving(app) as client:  # type: ignore[arg-type]
            responses = await classify_all(client, [None] * 6)
            failed = [r for r in responses if r.status_code == 500]
            assert 1 <= len(failed) <= 3 and len(failed) + sum(
                r.status_code == 200 for r in responses
            ) == len(responses), [r.status_code for r in responses]
            for r in failed:
                assert r.json()["error_type"] == "inference_failed"
                assert r.headers["x-request-id"] in caplog.text
            assert (await classify_all(client, [None]))[0].status_code == 200

    with caplog.at_level(logging.ERROR, logger="service"):
        asyncio.run(body())
    assert "inference failed for a batch" in caplog.text and model.calls >= 2


def test_nan_or_inf_in_the_outputs_fails_those_samples_only(
    served_model: ServedModel, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    top = served_model.max_bitops
    nan_budget, inf_budget = top, top * 0.999

    def fault(call: int, budgets: torch.Tensor, run: Callable[[], BatchOutput]) -> BatchOutput:
        out = run()
        probabilities, bitops = out.probabilities.clone(), out.bitops.clone()
        probabilities[budgets == nan_budget] = float("nan")
        bitops[budgets == inf_budget] = float("inf")
        return replace(out, probabilities=probabilities, bitops=bitops)

    app = app_with(
        FaultyModel(served_model, fault),
        tiny_model_dir,
        max_batch_size=8,
        max_queue_delay_seconds=0.05,
    )
    budgets = [nan_budget, inf_budget, top * 0.9, top * 0.8, top * 0.6, top * 0.7]

    async def body() -> None:
        async with serving(app) as client:  # type: ignore[arg-type]
            responses = await classify_all(client, budgets)
            assert [r.status_code for r in responses] == [500, 500, 200, 200, 200, 200]
            for r in responses[:2]:
                assert r.json()["error_type"] == "inference_failed"
                assert r.headers["x-request-id"] in caplog.text
            assert (await classify_all(client, [top * 0.9]))[0].status_code == 200

    with caplog.at_level(logging.ERROR, logger="service"):
        asyncio.run(body())
    assert "non-finite outputs" in caplog.text


def test_a_saturated_decoder_pool_gives_504_at_the_deadline_not_a_hang(
    served_model: ServedModel, tiny_model_dir: Path
) -> None:
    large = encode(fmnist_like(3, size=300))  # 90,000 pixels: decoded in a thread
    app = app_with(served_model, tiny_model_dir, request_timeout_seconds=0.5)

    async def body() -> None:
        async with serving(app) as client:  # type: ignore[arg-type]
            loop = asyncio.get_running_loop()
            loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
            gate = threading.Event()
            blocker = loop.run_in_executor(None, gate.wait, 30)  # the only decoder thread
            try:
                clock = time.perf_counter()
                late, small = await asyncio.gather(
                    classify_all(client, [None], image=large), classify_all(client, [None])
                )
                waited = time.perf_counter() - clock
                assert late[0].status_code == 504, late[0].text
                assert late[0].json()["error_type"] == "deadline_exceeded"
                assert "decoder thread" in late[0].json()["error"]
                assert 0.4 <= waited < 2.0, waited
                assert small[0].status_code == 200  # small images decode inline meanwhile
            finally:
                gate.set()
                await blocker
            assert (await classify_all(client, [None], image=large))[0].status_code == 200

    asyncio.run(body())


def test_an_event_loop_blocked_for_200ms_delays_but_answers_every_request(
    served_model: ServedModel, tiny_model_dir: Path
) -> None:
    app = app_with(served_model, tiny_model_dir, max_batch_size=4, max_queue_delay_seconds=0.01)

    async def block_soon() -> None:
        await asyncio.sleep(0.02)
        time.sleep(0.2)  # noqa: ASYNC251 - the fault: a blocking call on the event loop

    async def body() -> None:
        async with serving(app) as client:  # type: ignore[arg-type]
            clock = time.perf_counter()
            responses, _ = await asyncio.gather(classify_all(client, [None] * 16), block_soon())
            assert [r.status_code for r in responses] == [200] * 16
            assert time.perf_counter() - clock >= 0.2
            assert (await classify_all(client, [None]))[0].status_code == 200

    asyncio.run(body())


# -- a client's faults on a JSON route, over raw ASGI ---------------------------------------
def test_a_json_body_late_is_408_and_one_abandoned_is_499(
    served_model: ServedModel, tiny_model_dir: Path
) -> None:
    """FastAPI turns any failure to read a JSON body into a 400; neither the body's deadline
    nor a vanished client may come out as that (or as a 500)."""
    app = app_with(served_model, tiny_model_dir, body_timeout_seconds=0.2)

    async def call(receive: Callable[[], object]) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
        await app(asgi_post_scope("/feedback", headers), receive, send)  # type: ignore[operator]
        return sent

    async def body() -> None:
        async with serving(app) as client:  # type: ignore[arg-type]
            first = True

            async def trickle() -> dict:
                nonlocal first
                if first:
                    first = False
                    return {"type": "http.request", "body": b'{"id": ', "more_body": True}
                await asyncio.sleep(30)  # the rest never comes
                raise AssertionError("not cut off")

            clock = time.perf_counter()
            sent = await call(trickle)
            assert 0.15 <= time.perf_counter() - clock < 2.0
            start = sent[0]
            assert start["status"] == 408
            assert (b"connection", b"close") in start["headers"]
            assert json.loads(sent[1]["body"])["error_type"] == "body_timeout"

            async def vanish() -> dict:
                return {"type": "http.disconnect"}

            await call(vanish)
            metrics = (await client.get("/metrics")).text
            assert 'abn_requests_total{route="/feedback",status_code="499"} 1.0' in metrics
            assert 'status_code="500"' not in metrics

    asyncio.run(body())
