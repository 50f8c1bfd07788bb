"""Integration: ``ABN_MODEL_PROCESS=shared`` with ``ABN_WORKERS=2``, real processes. Two front
ends serve the port and one model process answers both (its batches, and only its, in the
metrics; the answers those of the model), its full queue is a 429 with Retry-After, a request
past its deadline is a 504 and never runs, SIGTERM drains the front ends and then the model
process with requests in flight, and a model process that dies, or cannot load its model,
stops the server (the latter with the reason).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from abn.preprocess import pil_to_uint8
from service.model import ServedModel
from service.server import worker_count
from service.settings import Settings
from service.supervisor import usable_cores

from .helpers import Scrape, ServerProcess, png, run_with_model_held, serve_until_exit
from .test_workers import fresh, launch_two_workers, metrics_dir, per_pid, wait_all_ready

pytestmark = pytest.mark.timeout(480)  # model loads on a shared 2-core box

PNG = {"Content-Type": "image/png"}
IMAGES = [png(5000 + i) for i in range(8)]
Start = Callable[..., tuple[ServerProcess, Path]]


@pytest.fixture
def start(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Start]:
    """Start a shared-model server of two front ends with these settings, ready; stopped at
    the end. Returns it and the TMPDIR its run directory is made in."""
    servers: list[ServerProcess] = []

    def launch(**settings: object) -> tuple[ServerProcess, Path]:
        server, tmp = launch_two_workers(
            tiny_model_dir, tmp_path, "shared.log", model_process="shared", **settings
        )
        servers.append(server)
        wait_all_ready(server)
        return server, tmp

    try:
        yield launch
    finally:
        for server in servers:
            server.stop()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_two_front_ends_are_answered_by_one_model_process(
    start: Start, tiny_model_dir: Path
) -> None:
    server, tmp = start()
    n = 40
    with fresh() as c:
        answers = [
            c.post(server.url + "/classify", content=IMAGES[i % 8], headers=PNG) for i in range(n)
        ]
        pinned = c.post(
            server.url + "/classify", content=IMAGES[0], headers={**PNG, "X-Bit-Widths": "4"}
        )
        card = c.get(server.url + "/v1/model").json()
        scrapes = [Scrape(c.get(server.url + "/metrics").text) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * n
    directory = metrics_dir(tmp)
    front_ends = per_pid(directory, "abn_requests_total", route="/classify")
    batches = per_pid(directory, "abn_batch_size_sum", kind="histogram")
    ran = {pid: v for pid, v in batches.items() if v > 0}
    assert len(front_ends) == 2 and sum(front_ends.values()) == n + 1, front_ends  # both
    assert len(ran) == 1 and sum(ran.values()) == n + 1, batches  # one process ran them all
    (owner,) = ran
    assert owner not in front_ends  # not a front end: the model process
    assert {parent_of(pid) for pid in [owner, *front_ends]} == {server.proc.pid}
    for scrape in scrapes:  # whichever front end answered the scrape
        assert scrape.value("abn_batch_size_sum") == n + 1
        assert scrape.value("abn_queue_duration_seconds_count") == n + 1
        assert scrape.value("abn_inference_duration_seconds_count") > 0
        assert scrape.value("abn_bitops_used_count") == n + 1
        # counted by the front ends as answers came back, one per layer of each image
        assert scrape.value("abn_layer_width_selections_total") == (n + 1) * len(card["layers"])
        assert scrape.value("abn_requests_total", route="/classify", status_code="200") == n + 1
        assert scrape.value("abn_pending_requests") == 0
        assert scrape.value("abn_model_info") == 1

    # the answer is the model's: what the model directory computes for that image here
    model = ServedModel.load(tiny_model_dir, "cpu")
    facts = ("layers", "bit_candidates", "min_bitops", "max_bitops", "classes", "device")
    assert {k: card[k] for k in facts} == {k: model.card()[k] for k in facts}
    image = pil_to_uint8(Image.open(io.BytesIO(IMAGES[0])), model.input_spec)
    out = model.infer(image[None], torch.tensor([model.max_bitops]), torch.full((1, 8), 4))
    body = pinned.json()
    assert body["bit_widths"] == out.widths[0].tolist() == [4] * model.num_layers
    assert body["bitops"] == float(out.bitops[0])
    expected = out.probabilities[0]
    for top in body["top_k"]:
        assert top["probability"] == pytest.approx(float(expected[top["label"]]), rel=1e-5)


def test_a_full_queue_is_429_and_a_request_past_its_deadline_504_never_run(
    start: Start,
) -> None:
    """The model held: one request in the model and two queued fill the model process's queue
    of two; the next is 429 with Retry-After. The held ones pass their 2 s deadline: 504; once
    the model is free, none of the two queued ever runs."""
    server, _ = start(max_queue_size=2, request_timeout_seconds=2)
    gate = server.model_gate
    assert gate is not None

    async def body() -> tuple[list[httpx.Response], httpx.Response]:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as c,
            httpx.AsyncClient(base_url=server.url, timeout=10) as probe,
        ):
            held = []
            for i in range(3):
                held.append(
                    asyncio.create_task(c.post("/classify", content=IMAGES[i], headers=PNG))
                )
                while (
                    Scrape((await probe.get("/metrics")).text).value("abn_pending_requests") < i + 1
                ):
                    await asyncio.sleep(0.02)
            refused = await c.post("/classify", content=IMAGES[3], headers=PNG)
            return list(await asyncio.gather(*held)), refused

    held, refused = run_with_model_held(gate, body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error_type"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    assert [r.status_code for r in held] == [504] * 3, [r.text for r in held]
    assert {r.json()["error_type"] for r in held} == {"deadline_exceeded"}
    with fresh() as c:
        assert c.post(server.url + "/classify", content=IMAGES[4], headers=PNG).status_code == 200
        end = time.monotonic() + 10
        while (scrape := Scrape(c.get(server.url + "/metrics").text)).value(
            "abn_pending_requests"
        ) and time.monotonic() < end:
            time.sleep(0.05)
    assert scrape.value("abn_batch_size_sum") == 2  # the held one and the last: not the queued
    assert scrape.value("abn_pending_requests") == 0
    assert scrape.value("abn_requests_total", route="/classify", status_code="429") == 1
    assert scrape.value("abn_requests_total", route="/classify", status_code="504") == 3


def test_sigterm_drains_the_front_ends_then_the_model_process(start: Start) -> None:
    """With the model held, requests wait in the model process; SIGTERM to the server:
    readiness 503 and new requests 503 at once, every request in flight answered 200 once the
    model runs (the model process outlives the front ends' drain), exit 0, directory removed."""
    server, tmp = start(shutdown_timeout_seconds=30)
    directory = metrics_dir(tmp)
    gate = server.model_gate
    assert gate is not None
    n = 8

    async def body() -> tuple[list[int], int]:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c,
            httpx.AsyncClient(base_url=server.url, timeout=10) as probe,
        ):
            sent = []
            end = time.monotonic() + 60
            for i in range(n):
                sent.append(
                    asyncio.create_task(c.post("/classify", content=IMAGES[i], headers=PNG))
                )
                while (
                    Scrape((await probe.get("/metrics")).text).value("abn_pending_requests") < i + 1
                ):
                    assert time.monotonic() < end, "the requests never queued"
                    await asyncio.sleep(0.02)
            os.kill(server.proc.pid, signal.SIGTERM)
            while (await probe.get("/readyz")).status_code != 503:
                assert time.monotonic() < end, "readiness never dropped"
                await asyncio.sleep(0.02)
            late = await probe.post("/classify", content=IMAGES[0], headers=PNG)
            gate.unlink()
            answered = await asyncio.gather(*sent)
            return [r.status_code for r in answered], late.status_code

    codes, late = run_with_model_held(gate, body)
    rc = server.proc.wait(timeout=60)
    assert codes == [200] * n, server.log()
    assert late == 503
    assert rc == 0, server.log()
    assert not directory.exists()
    assert "Traceback" not in server.log()


def test_the_model_process_dying_stops_the_server_with_status_1(start: Start) -> None:
    """Killed while serving: the supervisor stops the front ends and exits 1, as it does when
    a worker dies."""
    server, _ = start()
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    (owner,) = [
        int(pid)
        for pid in children.split()
        if b"service.model_owner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    os.kill(owner, signal.SIGKILL)
    assert server.proc.wait(timeout=60) == 1
    assert f"the model process {owner} exited with status -9" in server.log(), server.log()


def test_shared_front_ends_default_to_one_per_core_on_cuda_too() -> None:
    """They hold no model, so a GPU host's cores all serve HTTP; per-worker copies stay one."""
    assert worker_count(Settings(model_process="shared", device="cuda")) == usable_cores()
    assert worker_count(Settings(device="cuda")) == 1


def test_a_model_process_that_cannot_load_stops_the_server(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A model directory whose checksums hold (``abn serve`` checks them before starting) but
    whose manifest disagrees with the network: the model process says why and exits 1, and
    the server stops with that status."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][:-1]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = serve_until_exit(broken, 180, workers=2, model_process="shared")
    assert result.returncode == 1, result.stderr
    assert "the model could not be served" in result.stderr, result.stderr
    assert "9 classes but the network has 10 outputs" in result.stderr, result.stderr
    assert "the model process" in result.stderr and "exited with status 1" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
