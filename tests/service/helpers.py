"""Shared helpers of the service tests: images, metric scraping, ASGI and real-process servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import struct
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loadtest.server import ManagedServer


# -- images ---------------------------------------------------------------------------------
def fmnist_like(seed: int, size: int = 28) -> np.ndarray:
    """A 28x28 uint8 image like the tiny test data: noise plus a bright band at a class row."""
    rng = np.random.default_rng(seed)
    image = (rng.random((size, size)) * 60).astype(np.uint8)
    row = 2 * int(rng.integers(0, 10))
    image[row : row + 6, 4:24] = 220
    return image


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png(seed: int = 0) -> bytes:
    return encode(fmnist_like(seed))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose data is a few bytes: a bomb
    shape that must be refused from the header, before anything is inflated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# -- metrics --------------------------------------------------------------------------------
class Scrape:
    """Samples of one ``/metrics`` text, summed over the labels a query leaves out."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
        self.names = {name for name, _, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v
            for n, ls, v in self.samples
            if n == name and all(ls.get(k) == want for k, want in labels.items())
        )

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(ls, v) for n, ls, v in self.samples if n == name]


METRIC_NAMES = {
    "abn_requests_total",
    "abn_request_duration_seconds",
    "abn_queue_duration_seconds",
    "abn_inference_duration_seconds",
    "abn_batch_size",
    "abn_pending_requests",
    "abn_bitops_budget",
    "abn_bitops_used",
    "abn_budget_utilization_ratio",
    "abn_layer_bits_total",  # deprecated: abn_layer_width_selections_total
    "abn_layer_width_selections_total",
    "abn_prediction_confidence",
    "abn_expected_accuracy",
    "abn_feedback_total",
    "abn_model_info",
}


def family_names(text: str) -> set[str]:
    """Metric family names as the contract names them (counters keep their ``_total``)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


# -- in-process app -------------------------------------------------------------------------
async def wait_phase(app: FastAPI, timeout: float = 60.0) -> str:
    state = app.state.service
    end = time.monotonic() + timeout
    while state.phase in ("loading", "warming"):
        if time.monotonic() > end:
            raise TimeoutError(f"app still {state.phase} after {timeout}s")
        await asyncio.sleep(0.01)
    return state.phase


@contextlib.asynccontextmanager
async def serving(app: FastAPI, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an httpx client talking to it over ASGI."""
    async with app.router.lifespan_context(app):
        if ready:
            assert await wait_phase(app) == "ready", app.state.service.load_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://asgi") as client:
            yield client


@contextlib.contextmanager
def serving_for_module(app: FastAPI) -> Iterator[tuple[asyncio.Runner, httpx.AsyncClient]]:
    """:func:`serving` for a module-scoped fixture: the app's lifespan and its client in one
    event loop (a Runner) that the module's tests run their requests in."""
    with asyncio.Runner() as runner:
        context = serving(app)
        client = runner.run(context.__aenter__())
        try:
            yield runner, client
        finally:
            runner.run(context.__aexit__(None, None, None))


def asgi_post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a POST to ``path``: for tests that call the app over raw ASGI, to send
    a body late, in part or never, which an HTTP client will not do."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


# -- real processes -------------------------------------------------------------------------
MODEL_GATE_SITE = Path(__file__).parent / "model_gate"  # its sitecustomize holds the model
T = TypeVar("T")


def run_with_model_held(gate: Path, body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(body())`` while a server started with ``model_gate=gate`` holds every
    batch (``body`` may open the gate itself); the gate is open again afterwards whatever
    happened, so a failing test never leaves its server stuck for the next one."""
    gate.touch()
    try:
        return asyncio.run(body())
    finally:
        gate.unlink(missing_ok=True)


class ServerProcess(ManagedServer):
    """A real ``abn serve`` on a free port (the benchmarks' :class:`ManagedServer`), launched
    in the background on construction: one worker process with one torch thread unless
    settings say otherwise (a setting of None: the server's default). ``model_gate``: a path;
    while a file exists there, the server's model holds every batch
    (``model_gate/sitecustomize.py``). ``extra_env``: other environment variables of the
    server."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        *,
        model_gate: Path | None = None,
        extra_env: dict[str, str] | None = None,
        **settings: object,
    ) -> None:
        settings = {"torch_threads": 1, "workers": 1, **settings}
        given = {name: value for name, value in settings.items() if value is not None}
        super().__init__(model_dir, log_path, **given)
        self.model_gate = model_gate
        self.extra_env = extra_env or {}
        self.launch()

    def environment(self) -> dict[str, str]:
        env = {**super().environment(), **self.extra_env}
        if self.model_gate is not None:
            env["ABNTEST_MODEL_GATE"] = str(self.model_gate)
            # a held batch must hold a model thread, not the event loop that answers
            env.setdefault("ABN_BATCH_EXECUTION", "thread")
            env["PYTHONPATH"] = os.pathsep.join(
                [str(MODEL_GATE_SITE), *filter(None, [env.get("PYTHONPATH")])]
            )
        return env


def serve_until_exit(
    model_dir: Path, timeout: float, **settings: object
) -> subprocess.CompletedProcess[str]:
    """``abn serve`` with only these settings (set as :class:`ManagedServer` sets them), run to
    its exit, its stderr captured: for a server that must refuse to start and say why."""
    server = ManagedServer(model_dir, Path(os.devnull), **settings)
    return subprocess.run(
        server.command(),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=server.environment(),
    )


@contextlib.contextmanager
def running_servers(
    model_dir: Path, logs: Path, specs: dict[str, dict]
) -> Iterator[dict[str, ServerProcess]]:
    """Start one real ``abn serve`` per spec (settings overrides), wait until all are ready,
    and on exit stop them all and require a clean exit (status 0), showing logs otherwise."""
    started = {
        name: ServerProcess(model_dir, logs / f"{name}.log", **kw) for name, kw in specs.items()
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        codes = {name: server.stop() for name, server in started.items()}
    assert codes == {name: 0 for name in started}, {n: s.log() for n, s in started.items()}
