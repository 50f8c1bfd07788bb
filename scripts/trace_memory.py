"""Python-level memory growth per request, in process: the app on a model, rounds of requests at
mixed budgets, resident memory and tracemalloc's traced total after each round, and the places
that grew most between the second round and the last.

A soak (``loadtest.soak``) sees resident memory, which also moves with the allocator's arenas
and the largest batch so far; this separates what Python objects keep from that. The feedback
store keeps every id for ``ABN_FEEDBACK_TTL_SECONDS``, so its TTL is 1 s here unless given::

    python scripts/trace_memory.py --rounds 5 --requests 1500
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tracemalloc
from pathlib import Path

import httpx
import torch

from abn.store import DEFAULT_MODEL_DIR
from loadtest.machine import proc_status_kib
from loadtest.workload import Images
from service.app import create_app
from service.settings import Settings

BUDGETS = ("50e6", "100e6", "200e6", "400e6", "1e9")
CONCURRENCY = 8


def _rss_mib() -> float:
    kib = proc_status_kib(os.getpid(), "VmRSS")
    return 0.0 if kib is None else kib / 1024.0


async def _round(client: httpx.AsyncClient, images: Images, first: int, count: int) -> None:
    async def one(i: int) -> None:
        headers = {"Content-Type": "image/png", "X-BitOps-Budget": BUDGETS[i % len(BUDGETS)]}
        response = await client.post(
            "/classify", content=images.png(i % len(images)), headers=headers
        )
        response.raise_for_status()

    for start in range(first, first + count, CONCURRENCY):
        await asyncio.gather(*(one(start + k) for k in range(CONCURRENCY)))


async def trace(args: argparse.Namespace) -> None:
    images = Images.fashion_mnist(None, limit=200)
    settings = Settings(model_dir=args.model, torch_threads=1, feedback_ttl_seconds=args.ttl)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        while app.state.service.phase not in ("ready", "failed"):
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            before = None
            for r in range(args.rounds):
                await _round(client, images, r * args.requests, args.requests)
                gc.collect()
                if r == 1:
                    tracemalloc.start(10)
                    before = tracemalloc.take_snapshot()
                traced = tracemalloc.get_traced_memory()[0] / 2**20
                done = (r + 1) * args.requests
                print(
                    f"round {r}: {done} requests, RSS {_rss_mib():.1f} MiB, traced {traced:.2f} MiB"
                )
            if before is not None:
                for stat in tracemalloc.take_snapshot().compare_to(before, "lineno")[:8]:
                    print(stat)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=1500, help="per round")
    p.add_argument("--ttl", type=float, default=1.0, help="ABN_FEEDBACK_TTL_SECONDS")
    args = p.parse_args()
    if args.rounds < 3 or args.requests < CONCURRENCY:
        p.error(f"--rounds at least 3 and --requests at least {CONCURRENCY}")
    torch.set_num_threads(1)
    asyncio.run(trace(args))


if __name__ == "__main__":
    main()
