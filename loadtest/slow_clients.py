"""Hold many slow connections open against a local ``abn serve``, for a bounded time.

The attack of issue 14: each connection sends its headers and a few bytes of a body it
declares much longer, then trickles one byte every ``--trickle`` seconds. The server cuts each
one off at ``ABN_BODY_TIMEOUT_SECONDS`` (408, connection closed); this script opens a new one in
its place at once, so about ``--connections`` stay open the whole time. Meanwhile measure a
normal client (``wrk``, see docs/operations.md) and compare with its idle figures.

Only loopback addresses, at most 20,000 connections and 10 minutes: it is for measuring one's
own server, not for pointing at others::

    python -m loadtest.slow_clients --port 8000 --connections 2000 --seconds 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any

MAX_CONNECTIONS = 20_000
MAX_SECONDS = 600.0


class Tally:
    """What the slow connections saw."""

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0
        self.statuses: Counter[str] = Counter()
        self.samples: list[int] = []


async def one_slow_client(host: str, port: int, trickle: float, tally: Tally) -> None:
    """Reconnect until cancelled: headers, 10 body bytes, then one byte per ``trickle``
    seconds."""
    head = (
        f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"Content-Length: 100000\r\n\r\n"
    ).encode()
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally.statuses["connect_error"] += 1
            await asyncio.sleep(0.1)
            continue
        tally.open += 1
        tally.opened += 1
        try:
            await _trickle_until_answered(reader, writer, head, trickle, tally)
        finally:
            tally.open -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _trickle_until_answered(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    head: bytes,
    trickle: float,
    tally: Tally,
) -> None:
    """The bytes come from a timer, not a task per byte: the load generator must stay cheap,
    or it takes from the server the CPU the measurement is about."""
    loop = asyncio.get_running_loop()

    def drip() -> None:
        if not writer.is_closing():
            writer.write(b"\x00")
            timer[0] = loop.call_later(trickle, drip)

    timer = [loop.call_later(trickle, drip)]
    try:
        writer.write(head + b"\x89PNG\r\n\x1a\n\x00\x00")
        line = await reader.readline()  # the server's answer, or b"" when it closed
        tally.statuses[line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"] += 1
    except OSError:
        tally.statuses["reset"] += 1
    finally:
        timer[0].cancel()


async def run(host: str, port: int, connections: int, seconds: float, trickle: float) -> dict:
    loop = asyncio.get_running_loop()
    tally = Tally()
    ramp_end = loop.time() + min(5.0, seconds / 4)
    end = loop.time() + seconds
    tasks = []
    for i in range(connections):  # spread the connects over the ramp, not all in one burst
        tasks.append(asyncio.create_task(one_slow_client(host, port, trickle, tally)))
        if i % 100 == 99:
            await asyncio.sleep(max(0.0, (ramp_end - loop.time()) / (connections / 100)))
    started = time.monotonic()
    while loop.time() < end:
        await asyncio.sleep(1.0)
        tally.samples.append(tally.open)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    held = tally.samples[int(len(tally.samples) * 0.2) :] or [0]  # after the ramp
    return {
        "connections": connections,
        "seconds": round(time.monotonic() - started, 1),
        "open_min": min(held),
        "open_mean": round(sum(held) / len(held)),
        "opened": tally.opened,
        "answers": dict(tally.statuses),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.slow_clients",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="a loopback address only")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--trickle", type=float, default=1.0, help="seconds between trickled bytes")
    return p


def _event_loop_run(main: Coroutine[Any, Any, dict]) -> dict:
    """uvloop when installed (the service's own loop, a fraction of asyncio's CPU)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print("slow_clients: --host must be a loopback address", file=sys.stderr)
        return 2
    if not 1 <= args.connections <= MAX_CONNECTIONS or not 0 < args.seconds <= MAX_SECONDS:
        print(
            f"slow_clients: at most {MAX_CONNECTIONS} connections and {MAX_SECONDS:g} s",
            file=sys.stderr,
        )
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 64 and (hard == resource.RLIM_INFINITY or hard > soft):
        wanted = args.connections + 64
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    flood = run(args.host, args.port, args.connections, args.seconds, args.trickle)
    report = _event_loop_run(flood)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
