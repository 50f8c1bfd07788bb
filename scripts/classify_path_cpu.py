"""Event-loop CPU per ``POST /classify`` through the app's whole ASGI stack, without an HTTP
server or a socket: the thread CPU time of the event-loop thread over N requests
(one 28x28 PNG, pinned to 4 bits), so what the route, the middleware, decoding, metrics and
the engine hand-off cost the loop is measured apart from uvicorn and from the model thread.
Thread CPU time, not wall time: on a shared machine it moves less with other load; and the
least of several rounds (``--repeats``) moves less still. ``--concurrency 64`` sends waves of
64 requests at once, as a loaded server sees them (batches of 32); ``--profile 60`` adds
cProfile's cumulative times, each layer's share of the path.

To compare two checkouts, run each with its tree first on ``PYTHONPATH`` (issue 19):

    PYTHONPATH=$PWD .venv/bin/python scripts/classify_path_cpu.py --requests 640 \\
        --concurrency 64 --repeats 12
    cd <other checkout> && PYTHONPATH=$PWD <this checkout>/.venv/bin/python \\
        <this checkout>/scripts/classify_path_cpu.py --model <this checkout>/model_store/fmnist-abn
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import statistics
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


async def measure(
    model: str, requests: int, concurrency: int, repeats: int, profiler: cProfile.Profile | None
) -> tuple[list[float], float]:
    """Loop-thread CPU ms per request of each of ``repeats`` rounds of ``requests`` (in waves
    of ``concurrency`` at once), and the wall ms per request over all, after a warm-up.

    Batches run in a model thread (``ABN_BATCH_EXECUTION=thread``), so the loop's CPU is the
    request path's alone; on a CPU the server runs them on the loop, which adds the model.
    ``profiler``, when given, records the rounds (and inflates their CPU)."""
    logging.disable(logging.INFO)  # the access line's I/O is not the path's cost
    app = create_app(Settings(model_dir=model, device="cpu", batch_execution="thread"))
    body = png()
    waves = max(1, requests // concurrency)
    async with app.router.lifespan_context(app):
        while app.state.service.phase != "ready":
            await asyncio.sleep(0.05)
        for _ in range(200 // concurrency + 1):
            assert set(await asyncio.gather(*[one(app, body) for _ in range(concurrency)])) == {200}
        rounds, wall = [], time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for _ in range(repeats):
            cpu = time.thread_time()
            for _ in range(waves):
                await asyncio.gather(*[one(app, body) for _ in range(concurrency)])
            rounds.append((time.thread_time() - cpu) / (waves * concurrency) * 1000)
        if profiler is not None:
            profiler.disable()
        wall = (time.perf_counter() - wall) / (repeats * waves * concurrency) * 1000
    return rounds, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model_store/fmnist-abn")
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the least is reported")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="K",
        help="also print the K functions with the most cumulative time (cProfile): the share "
        "of each layer of the path",
    )
    args = parser.parse_args()
    if min(args.requests, args.concurrency, args.repeats) < 1:
        parser.error("--requests, --concurrency and --repeats must be at least 1")
    torch.set_num_threads(1)
    profiler = None if args.profile is None else cProfile.Profile()
    rounds, wall = asyncio.run(
        measure(args.model, args.requests, args.concurrency, args.repeats, profiler)
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    print(
        f"{min(rounds):.3f} ms event-loop CPU per request, least of {len(rounds)} rounds "
        f"(median {statistics.median(rounds):.3f}; wall {wall:.3f} ms)"
    )


if __name__ == "__main__":
    main()
