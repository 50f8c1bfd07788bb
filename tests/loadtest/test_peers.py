"""The bench's peers: they compute what the service computes, and answer like servers.

The LitServe peer needs its own environment (``.venv-peers``, made by ``make bench``); its test
is in test_bench.py and skips without it. These run in the project's environment.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from abn.store import open_model_dir
from loadtest.peers.lean import InlineBatcher, LeanApp
from loadtest.peers.model import PinnedModel
from loadtest.peers.naive import create_app
from loadtest.peers.registry import parse_peers
from loadtest.peers.venv import missing_modules
from loadtest.server import free_port
from service.model import ServedModel


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> PinnedModel:
    return PinnedModel(open_model_dir(tiny_model_dir), bits=4)


def test_a_peer_answers_what_the_service_computes_pinned(
    model: PinnedModel, tiny_model_dir: Path
) -> None:
    served = ServedModel.load(tiny_model_dir, "cpu")
    images = [model.decode(_png(seed)) for seed in range(6)]
    answers = model.classify_batch(images)
    n = served.num_layers
    out = served.infer(
        torch.stack(images), torch.full((6,), served.max_bitops), torch.full((6, n), 4)
    )
    assert [a["label"] for a in answers] == out.probabilities.argmax(1).tolist()
    expected = out.probabilities.max(1).values.tolist()
    assert [a["confidence"] for a in answers] == pytest.approx(expected, abs=1e-5)
    assert answers[0]["bit_widths"] == [4] * n
    assert answers[0]["bitops"] == pytest.approx(float(out.bitops[0]))


class _Recorder:
    """Stands in for the model: records each batch it is given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def classify_batch(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        self.batches.append(len(images))
        return [{"label": int(x)} for x in images]


def test_the_lean_batcher_runs_a_lone_request_at_once_and_batches_what_queued() -> None:
    recorder = _Recorder()

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        batcher = InlineBatcher(recorder, max_batch=4)  # type: ignore[arg-type]
        lone = await asyncio.wait_for(batcher.submit(torch.tensor(7)), timeout=1.0)
        many = await asyncio.gather(*(batcher.submit(torch.tensor(i)) for i in range(6)))
        return [lone], list(many)

    lone, many = asyncio.run(go())
    assert lone == [{"label": 7}]
    assert many == [{"label": i} for i in range(6)]  # each answer to its own request
    assert recorder.batches == [1, 4, 2]  # six queued at once, at most four a batch


def test_a_failing_batch_fails_each_of_its_requests_instead_of_leaving_them_waiting() -> None:
    class Broken:
        def classify_batch(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
            raise RuntimeError("no model today")

    async def go() -> list[BaseException | dict[str, Any]]:
        batcher = InlineBatcher(Broken())  # type: ignore[arg-type]
        futures = [batcher.submit(torch.tensor(i)) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 1.0)

    outcomes = asyncio.run(go())
    assert [str(o) for o in outcomes] == ["no model today"] * 3


def _ask(app: Any) -> list[httpx.Response]:
    """An image, junk, the health route and a wrong method, in process."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://peer") as client:
            png = {"Content-Type": "image/png"}
            return [
                await client.post("/classify", content=_png(1), headers=png),
                await client.post("/classify", content=b"not an image", headers=png),
                await client.get("/health"),
                await client.get("/classify"),
            ]

    return asyncio.run(go())


@pytest.mark.parametrize("make_app", [LeanApp, create_app], ids=["lean", "naive"])
def test_a_peer_answers_images_and_refuses_the_rest(model: PinnedModel, make_app: Any) -> None:
    ok, bad, health, wrong = _ask(make_app(model))
    assert ok.status_code == 200
    assert ok.json()["bit_widths"] == model.widths and 0 <= ok.json()["label"] < 10
    assert bad.status_code == 400
    assert health.status_code == 200
    assert wrong.status_code in (404, 405)


def test_peer_names_and_the_environment_probe() -> None:
    assert parse_peers("naive, lean,naive") == ("naive", "lean")
    assert parse_peers("none") == ()
    with pytest.raises(ValueError, match="choose from litserve, naive, lean"):
        parse_peers("naive,bentoml")
    python = Path(sys.executable)
    assert missing_modules(python, ["json", "no_such_module_here"]) == ["no_such_module_here"]
    assert missing_modules(Path("/nonexistent/python"), ["json"]) == ["json"]


def test_the_lean_floor_serves_one_port_from_a_process_per_worker(tiny_model_dir: Path) -> None:
    """``--workers 2``: two processes, each with its own socket on the port, answer images;
    SIGTERM to the group stops them all, exit 0."""
    port = free_port()
    command = [sys.executable, "-m", "loadtest.peers.lean", "--model", str(tiny_model_dir)]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "2"], start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the lean floor exited"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the lean floor did not start"
            time.sleep(0.2)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        png = {"Content-Type": "image/png"}
        answers = [httpx.post(f"{url}/classify", content=_png(i), headers=png) for i in range(8)]
        assert [a.status_code for a in answers] == [200] * 8
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
