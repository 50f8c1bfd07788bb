"""Event-loop CPU per ``POST /classify`` through the app's whole ASGI stack, without an HTTP
server or a socket: the thread CPU time of the event-loop thread over N sequential requests
(one 28x28 PNG, pinned to 4 bits), so what the route, the middleware, decoding, metrics and
the engine hand-off cost the loop is measured apart from uvicorn and from the model thread.
Thread CPU time, not wall time: on a shared machine it moves less with other load.

To compare two checkouts, run each with its tree first on ``PYTHONPATH`` (issue 19):

    PYTHONPATH=$PWD .venv/bin/python scripts/classify_path_cpu.py --requests 2000
    cd <other checkout> && PYTHONPATH=$PWD <this checkout>/.venv/bin/python \\
        <this checkout>/scripts/classify_path_cpu.py --model <this checkout>/model_store/fmnist-abn
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.app import create_app
from service.settings import Settings


def png() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def scope_for(body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"x"), (b"content-type", b"image/png"), (b"x-bit-widths", b"4")]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/classify",
        "raw_path": b"/classify",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }


async def one(app: Any, body: bytes) -> int:
    """One request through the app; its status."""
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope_for(body), receive, send)
    return int(sent[0]["status"])


async def measure(model: str, requests: int) -> tuple[float, float]:
    """(loop-thread CPU ms, wall ms) per request, after 200 warm-up requests."""
    logging.disable(logging.INFO)  # the access line's I/O is not the path's cost
    app = create_app(Settings(model_dir=model, device="cpu"))
    body = png()
    async with app.router.lifespan_context(app):
        while app.state.service.phase != "ready":
            await asyncio.sleep(0.05)
        for _ in range(200):
            assert await one(app, body) == 200
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(requests):
            await one(app, body)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1000, wall / requests * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model_store/fmnist-abn")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu, wall = asyncio.run(measure(args.model, args.requests))
    print(f"{cpu:.3f} ms event-loop CPU per request (wall {wall:.3f} ms)")


if __name__ == "__main__":
    main()
