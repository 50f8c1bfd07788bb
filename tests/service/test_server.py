"""Integration: real ``abn serve`` processes on free ports, talked to over TCP with httpx.

Three servers start together (module fixture) - default settings, a guarded one (API key, a
queue of one, small limits) and one whose deadline is a microsecond - and each SIGTERM test
starts its own. Every server runs the tiny test model.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from loadtest.server import abn_command, free_port

from .helpers import (
    Scrape,
    ServerProcess,
    encode,
    png,
    png_header_only,
    running_servers,
    serve_until_exit,
)

pytestmark = pytest.mark.timeout(180)  # a hang fails fast, not after 10 minutes

API_KEY = "integration-key"
PNG = {"Content-Type": "image/png"}
IMAGES = [png(1000 + i) for i in range(40)]


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    logs = tmp_path_factory.mktemp("server-logs")
    specs = {
        "main": {"max_queue_delay_seconds": 0.01, "max_batch_size": 32},
        "guarded": {
            "api_key": API_KEY,
            "max_batch_size": 1,
            "max_queue_size": 1,
            "max_queue_delay_seconds": 0,
            "max_body_bytes": 100_000,
            "max_image_pixels": 1_000_000,
        },
        "timeout": {"request_timeout_seconds": 0.000001},
    }
    with running_servers(tiny_model_dir, logs, specs) as started:
        yield started


def card(server: ServerProcess) -> dict:
    return httpx.get(server.url + "/v1/model").json()


def scrape(server: ServerProcess) -> Scrape:
    return Scrape(httpx.get(server.url + "/metrics").text)


def client(server: ServerProcess, connections: int = 64) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60.0)


def test_routes_and_errors_over_http(servers: dict) -> None:
    main = servers["main"]
    model = card(main)
    budget = (model["min_bitops"] + model["max_bitops"]) / 2
    with httpx.Client(base_url=main.url) as c:
        for path in ("/healthz", "/v2/health/live", "/readyz", "/v2/health/ready", "/v1/model"):
            assert c.get(path).status_code == 200, path
        metrics = c.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "abn_model_info" in metrics.text
        assert "/classify" in c.get("/openapi.json").json()["paths"]

        r = c.post("/classify", content=IMAGES[0], headers={**PNG, "X-BitOps-Budget": str(budget)})
        assert r.status_code == 200
        out = r.json()
        assert out["bitops"] <= budget and float(r.headers["x-bitops-used"]) == out["bitops"]
        assert float(r.headers["x-bitops-budget"]) == budget
        assert r.headers["x-request-id"] == out["id"]
        r = c.post(
            "/classify",
            files={"image": ("a.png", IMAGES[0], "image/png")},
            headers={"X-BitOps-Budget": str(budget)},
        )
        assert r.json()["label"] == out["label"]

        r = c.post("/feedback", json={"id": out["id"], "label": out["label"]})
        assert r.json()["outcome"] == "correct"
        assert c.post("/feedback", json={"id": "unknown", "label": 0}).status_code == 404

        def error(response: httpx.Response, status: int, error_type: str) -> None:
            assert response.status_code == status, response.text
            assert response.json()["error_type"] == error_type
            assert set(response.json()) == {"error", "error_type"}

        error(c.post("/classify", content=b"nope", headers=PNG), 400, "invalid_image")
        error(
            c.post("/classify", content=IMAGES[0], headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        error(
            c.post("/classify", content=IMAGES[0], headers={**PNG, "X-BitOps-Budget": "1e400"}),
            422,
            "invalid_budget",
        )
        error(
            c.post("/classify", content=IMAGES[0], headers={**PNG, "X-BitOps-Budget": "1K"}),
            422,
            "invalid_budget",
        )
        error(
            c.post("/classify", content=IMAGES[0], headers={**PNG, "X-Bit-Widths": "7"}),
            422,
            "invalid_bit_widths",
        )
        error(
            c.post(
                "/classify",
                content=IMAGES[0],
                headers={**PNG, "X-Bit-Widths": "8", "X-BitOps-Budget": str(model["min_bitops"])},
            ),
            422,
            "bit_widths_over_budget",
        )
        error(
            c.post("/classify", content=png_header_only(50_000, 50_000), headers=PNG),
            413,
            "payload_too_large",
        )
        error(c.get("/nowhere"), 404, "not_found")


def test_500_requests_with_random_budgets_stay_within_budget(servers: dict) -> None:
    main = servers["main"]
    model = card(main)
    rng = np.random.default_rng(0)
    budgets = rng.uniform(model["min_bitops"], model["max_bitops"] * 1.2, 500).tolist()
    before = scrape(main)

    async def body() -> list[httpx.Response]:
        gate = asyncio.Semaphore(32)
        async with client(main) as c:

            async def one(i: int, budget: float) -> httpx.Response:
                async with gate:
                    return await c.post(
                        "/classify",
                        content=IMAGES[i % len(IMAGES)],
                        headers={**PNG, "X-BitOps-Budget": repr(budget)},
                    )

            return await asyncio.gather(*(one(i, b) for i, b in enumerate(budgets)))

    responses = asyncio.run(body())
    assert [r.status_code for r in responses] == [200] * 500
    for budget, r in zip(budgets, responses, strict=True):
        out = r.json()
        assert out["budget"] == budget
        assert out["bitops"] <= budget and float(r.headers["x-bitops-used"]) <= budget
        assert len(out["bit_widths"]) == len(model["layers"])
    after = scrape(main)
    delta = lambda name, **kw: after.value(name, **kw) - before.value(name, **kw)  # noqa: E731
    assert delta("abn_requests_total", route="/classify", status_code="200") == 500
    assert delta("abn_layer_width_selections_total") == 500 * len(model["layers"])
    assert delta("abn_bitops_used_count") == 500
    assert delta("abn_batch_size_sum") == 500
    assert delta("abn_bitops_used_sum") == pytest.approx(sum(r.json()["bitops"] for r in responses))


def test_64_concurrent_requests_are_batched(servers: dict) -> None:
    main = servers["main"]
    before = scrape(main)

    async def body() -> list[httpx.Response]:
        async with client(main) as c:
            return await asyncio.gather(
                *(c.post("/classify", content=IMAGES[i % 40], headers=PNG) for i in range(64))
            )

    assert all(r.status_code == 200 for r in asyncio.run(body()))
    after = scrape(main)
    samples = after.value("abn_batch_size_sum") - before.value("abn_batch_size_sum")
    batches = after.value("abn_batch_size_count") - before.value("abn_batch_size_count")
    assert samples == 64
    assert samples / batches > 1, f"{batches} batches for 64 concurrent requests"


def test_batched_answer_equals_one_at_a_time(servers: dict) -> None:
    main = servers["main"]
    model = card(main)
    span = model["max_bitops"] - model["min_bitops"]
    probes = [
        (IMAGES[i], model["min_bitops"] + span * f) for i, f in enumerate((0.05, 0.3, 0.6, 1.0))
    ]

    def key(r: httpx.Response) -> tuple:
        out = r.json()
        return out["label"], out["bit_widths"], out["bitops"]

    with httpx.Client(base_url=main.url) as c:
        alone = [
            c.post("/classify", content=img, headers={**PNG, "X-BitOps-Budget": repr(b)})
            for img, b in probes
        ]

    async def burst() -> list[httpx.Response]:
        async with client(main) as c:
            calls = [
                c.post("/classify", content=IMAGES[10 + i % 30], headers=PNG) for i in range(40)
            ]
            for img, b in probes:
                calls.insert(
                    20,
                    c.post("/classify", content=img, headers={**PNG, "X-BitOps-Budget": repr(b)}),
                )
            responses = await asyncio.gather(*calls)
            return responses[20:24][::-1]

    before = scrape(main)
    together = asyncio.run(burst())
    after = scrape(main)
    batches = after.value("abn_batch_size_count") - before.value("abn_batch_size_count")
    assert batches < 44  # the burst was batched
    for a, t in zip(alone, together, strict=True):
        assert key(a) == key(t)
        assert a.json()["confidence"] == pytest.approx(t.json()["confidence"], abs=1e-4)


def test_auth_limits_and_a_full_queue(servers: dict) -> None:
    guarded = servers["guarded"]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=guarded.url) as c:
        assert c.post("/classify", content=IMAGES[0], headers=PNG).status_code == 401
        r = c.post("/classify", content=IMAGES[0], headers={**PNG, "Authorization": "Bearer no"})
        assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
        assert c.post("/feedback", json={"id": "x", "label": 1}).status_code == 401
        assert c.get("/metrics").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.post("/classify", content=IMAGES[0], headers={**PNG, **auth}).status_code == 200
        noise = encode(np.random.default_rng(1).integers(0, 255, (400, 400), dtype=np.uint8))
        assert len(noise) > 100_000
        r = c.post("/classify", content=noise, headers={**PNG, **auth})
        assert r.status_code == 413 and "100000 bytes" in r.json()["error"]
        r = c.post(
            "/classify", content=encode(np.zeros((1001, 1000), np.uint8)), headers={**PNG, **auth}
        )
        assert r.status_code == 413 and "1000000 pixels" in r.json()["error"]

    async def flood() -> list[httpx.Response]:
        async with client(guarded) as c:
            return await asyncio.gather(
                *(
                    c.post("/classify", content=IMAGES[i % 40], headers={**PNG, **auth})
                    for i in range(48)
                )
            )

    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and codes.count(429) >= 1 and codes.count(200) >= 1, codes
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error_type"] == "queue_full" and int(r.headers["retry-after"]) >= 1


def test_504_and_the_model_never_runs(servers: dict) -> None:
    server = servers["timeout"]
    with httpx.Client(base_url=server.url) as c:
        for i in range(3):
            r = c.post("/classify", content=IMAGES[i], headers=PNG)
            assert r.status_code == 504 and r.json()["error_type"] == "deadline_exceeded"
        metrics = scrape(server)
        assert metrics.value("abn_requests_total", route="/classify", status_code="504") == 3
        assert metrics.value("abn_batch_size_count") == 0


# SIGTERM. Made deterministic by holding the model (a request that finds it idle runs at once):
# with the model gate closed, the first batch waits in the model and the rest of the wave
# queues behind it, so the whole wave is provably in flight when the signal lands (no batch has
# run; checked from /metrics just before os.kill), whatever the CPU speed. Every wait below is
# generous and bounded.
DELAY = 3.0  # ABN_SHUTDOWN_DELAY_SECONDS: the port stays open (answering 503) this long
WAVE, LATE = 24, 8


async def _wait_until_queued(server: ServerProcess, n: int, timeout: float = 30.0) -> Scrape:
    """Poll /metrics until ``n`` requests are pending; returns that scrape."""
    end = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as probe:
        while True:
            metrics = Scrape((await probe.get("/metrics")).text)
            if metrics.value("abn_pending_requests") >= n:
                return metrics
            assert time.monotonic() < end, f"only {metrics.value('abn_pending_requests')} queued"
            await asyncio.sleep(0.02)


async def _classify(c: httpx.AsyncClient, i: int) -> tuple[object, object, float]:
    """(status or transport error name, error_type, monotonic time of the answer)."""
    try:
        r = await c.post("/classify", content=IMAGES[i % 40], headers=PNG)
        return r.status_code, r.json().get("error_type"), time.monotonic()
    except httpx.TransportError as err:
        return type(err).__name__, None, time.monotonic()


def test_sigterm_during_a_burst_loses_no_accepted_request(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM with WAVE accepted requests queued: readiness is 503 at once (and stays so),
    requests after the signal are refused with 503, every accepted request is answered 200,
    and the process exits 0 within a bounded time."""
    gate = tmp_path / "model-gate"
    server = ServerProcess(
        tiny_model_dir,
        tmp_path / "sigterm.log",
        model_gate=gate,
        max_batch_size=64,
        max_queue_size=1000,
        request_timeout_seconds=60,
        shutdown_delay_seconds=DELAY,
        shutdown_timeout_seconds=30,
    )
    seen = server.wait_ready()
    assert set(seen) <= {200, 503} and seen[-1] == 200
    gate.touch()  # the model holds every batch from now on

    async def body() -> dict:
        out: dict = {}
        async with (
            client(server, connections=WAVE) as first,
            client(server, LATE) as late,
            httpx.AsyncClient(base_url=server.url, timeout=10) as probe,
        ):
            wave = [asyncio.create_task(_classify(first, i)) for i in range(WAVE)]
            queued = await _wait_until_queued(server, WAVE)
            out["ran_before_sigterm"] = queued.value("abn_batch_size_count")
            assert (await probe.get("/readyz")).status_code == 200
            os.kill(server.proc.pid, signal.SIGTERM)
            out["signalled"] = signalled = time.monotonic()
            # readiness: 503 within a moment, and never 200 again
            readiness = []
            while time.monotonic() - signalled < 5:
                r = await probe.get("/readyz")
                readiness.append((r.status_code, r.json().get("status")))
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.01)
            out["ready_flip_s"] = time.monotonic() - signalled
            out["readiness"] = readiness
            # only after the flip was seen: new work is refused, liveness stays up
            out["late"] = await asyncio.gather(*(_classify(late, i) for i in range(LATE)))
            r = await probe.get("/readyz")
            out["readyz_again"] = (r.status_code, r.json().get("status"))
            out["healthz"] = (await probe.get("/healthz")).status_code
            gate.unlink()  # the model runs again: the wave must now be answered
            out["wave"] = await asyncio.gather(*wave)
        return out

    try:
        seen_by_client = asyncio.run(body())
        rc = server.proc.wait(timeout=60)
    finally:
        server.stop()
    exited_after = time.monotonic() - seen_by_client["signalled"]
    log = server.log()
    facts = f"{seen_by_client}; exit {rc} after {exited_after:.1f}s; log:\n{log}"
    print(
        f"\nSIGTERM with {WAVE} queued: readiness 503 after "
        f"{seen_by_client['ready_flip_s'] * 1000:.0f} ms, exit {rc} after {exited_after:.1f} s"
    )
    assert seen_by_client["ran_before_sigterm"] == 0, facts  # the wave was in flight
    readiness = seen_by_client["readiness"]
    assert readiness[-1] == (503, "draining") and seen_by_client["ready_flip_s"] < 2, facts
    assert all(code == 200 for code, _ in readiness[:-1]), facts
    assert seen_by_client["readyz_again"] == (503, "draining"), facts
    assert seen_by_client["healthz"] == 200, facts
    late = [(code, kind) for code, kind, _ in seen_by_client["late"]]
    assert late == [(503, "shutting_down")] * LATE, facts
    wave = seen_by_client["wave"]
    assert [(code, kind) for code, kind, _ in wave] == [(200, None)] * WAVE, facts
    assert all(at > seen_by_client["signalled"] for _, _, at in wave), facts
    assert rc == 0, facts
    assert DELAY <= exited_after < DELAY + 20, facts
    assert "Traceback" not in log, facts


def test_sigterm_exits_within_the_grace_even_if_work_cannot_finish(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The grace is a bound, and what it cuts short still gets a contract answer: with four
    requests held (one in a model that does not finish, three queued behind it), one upload
    that never finishes, and ABN_SHUTDOWN_TIMEOUT_SECONDS=1, the process exits 0 within a few
    seconds of the model finishing; the four are answered 503 shutting_down as the grace ends
    (queued ones just before it, the one in the model when the server cancels it), and the
    stalled upload is answered 503 when the server cuts it off (not uvicorn's plain-text 500)."""
    gate = tmp_path / "model-gate"
    server = ServerProcess(
        tiny_model_dir,
        tmp_path / "stuck.log",
        model_gate=gate,
        max_batch_size=64,
        request_timeout_seconds=60,
        shutdown_timeout_seconds=1,
    )
    server.wait_ready()
    gate.touch()

    async def stalled_upload() -> tuple[bytes, float]:
        """Headers announcing 1000 bytes, then 10 of them, then silence; the raw answer."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000\r\n\r\n" + IMAGES[0][:10]
        )
        await writer.drain()
        answer = await reader.read()  # until the server closes the connection
        writer.close()
        return answer, time.monotonic()

    async def body() -> tuple[list, tuple[bytes, float], float]:
        async with client(server, 4) as c:
            stuck = [asyncio.create_task(_classify(c, i)) for i in range(4)]
            upload = asyncio.create_task(stalled_upload())
            await _wait_until_queued(server, 4)
            os.kill(server.proc.pid, signal.SIGTERM)
            signalled = time.monotonic()
            answers = await asyncio.gather(*stuck)
            gate.unlink()  # the abandoned batch may now finish, and the process exit
            return answers, await upload, signalled

    try:
        answers, (raw, raw_at), signalled = asyncio.run(body())
        rc = server.proc.wait(timeout=30)
    finally:
        server.stop()
    exited_after = time.monotonic() - signalled
    facts = f"{answers}; {raw!r}; exit {rc} after {exited_after:.1f}s; log:\n{server.log()}"
    print(
        f"\nSIGTERM with work that cannot finish, grace 1 s: exit {rc} after {exited_after:.1f} s"
    )
    assert rc == 0, facts
    assert exited_after < 8, facts  # grace 1 s (+ polling), then the held batch ends
    assert [(code, kind) for code, kind, _ in answers] == [(503, "shutting_down")] * 4, facts
    assert all(at - signalled < 8 for _, _, at in answers), facts
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), facts
    assert json.loads(payload)["error_type"] == "shutting_down", facts
    assert raw_at - signalled < 8, facts


def test_a_tampered_truncated_or_missing_model_is_a_clear_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``abn serve`` refuses an altered model directory before binding its port, in a few
    lines that name the file and the reason (abn/store.py verifies every sha256)."""
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_model_dir, tampered)
    weights = tampered / "supernet.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, truncated)
    policy = truncated / "policy.safetensors"
    policy.write_bytes(policy.read_bytes()[:-100])
    for model_dir, expected in (
        (tampered, ("supernet.safetensors", "sha256")),
        (truncated, ("policy.safetensors", "truncated")),
        (tmp_path / "missing", ("manifest.json", "missing")),
    ):
        result = subprocess.run(
            [*abn_command(), "serve", "--model", str(model_dir), "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert all(word in result.stderr for word in expected), result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_that_fails_while_loading_stops_the_server(
    tiny_model_dir: Path, workers: str
) -> None:
    """One process, or a supervisor whose worker cannot load its model: exit 1, one line."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA to make the load fail")
    result = serve_until_exit(tiny_model_dir, 120, device="cuda", workers=workers)
    assert result.returncode == 1, result.stderr
    assert "no CUDA device" in result.stderr and "Traceback" not in result.stderr
