"""Client CPU per request of one httpx connection pool against several small ones.

Why the load generator shards its connections (loadtest.runner.LoadClient, docs/profiling.md):
closed loop against a running server, the same requests through one ``AsyncClient`` holding
every connection and through clients of a few connections each. Start a server first:

    ABN_DEVICE=cpu ABN_TORCH_THREADS=1 abn serve --model model_store/fmnist-abn --port 8000 &
    .venv/bin/python scripts/client_pool_cost.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

import httpx
import numpy as np
import uvloop
from PIL import Image


def png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


async def closed_loop(url: str, concurrency: int, pools: int, seconds: float) -> str:
    per = -(-concurrency // pools)
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    clients = [httpx.AsyncClient(base_url=url, limits=limits) for _ in range(pools)]
    body, headers = png(), {"Content-Type": "image/png", "X-BitOps-Budget": "200M"}
    done = 0

    async def worker(w: int, end: float) -> None:
        nonlocal done
        while time.monotonic() < end:
            await clients[w % pools].post("/classify", content=body, headers=headers)
            done += 1

    for measured in (False, True):  # a warm-up pass opens the connections first
        done, t0, cpu0 = 0, time.monotonic(), time.process_time()
        end = t0 + (seconds if measured else 2.0)
        await asyncio.gather(*(worker(w, end) for w in range(concurrency)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    for c in clients:
        await c.aclose()
    return (
        f"concurrency {concurrency}, {pools} pool(s) of {per}: {done / wall:.0f} req/s, "
        f"client CPU {1000 * cpu / done:.2f} ms/request ({100 * cpu / wall:.0f}% of a core)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    for concurrency, pools in ((32, 1), (32, 4), (32, 8), (128, 1), (128, 16)):
        print(uvloop.run(closed_loop(args.url, concurrency, pools, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
