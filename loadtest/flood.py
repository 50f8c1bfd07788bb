"""A normal client's latency while thousands of slow connections are open, against idle.

Issue 14's target: with ~2,000 slow connections open (``loadtest.slow_clients``: headers and a
few body bytes, then a byte a second, cut off by the server's body deadline and reopened at
once), a normal request's p99 stays within 2x its idle value. This starts ``abn serve`` on a
free port, then runs rounds of: ``wrk`` alone (idle), then the slow clients, and once their
ramp is over ``wrk`` again (flooded), the same request set, connection count and duration.
Rounds interleave the two conditions so a noisy machine disturbs both alike; the verdict is
on the ratio of the medians over rounds. Writes ``flood.json`` and ``flood.md``::

    python -m loadtest.flood --model model_store/fmnist-abn --rounds 3 --out reports/flood

The slow clients run on the same machine as the server (loopback only), so they take CPU
from it too; ``--attacker-nice 19`` gives them only what the server leaves, the nearest a
single machine gets to an attacker on another host. The page records the server's CPU in each
condition beside the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from abn.errors import DatasetNotFoundError
from abn.store import DEFAULT_MODEL_DIR
from loadtest.machine import machine_info
from loadtest.proctree import snapshot, usage_between
from loadtest.server import ManagedServer, parse_settings
from loadtest.workload import Images
from loadtest.wrk import WrkError, WrkResult, run_wrk, write_request_set

TARGET_P99_RATIO = 2.0  # issue 14: flooded p99 at most twice the idle p99


def start_slow_clients(
    port: int, connections: int, seconds: float, nice: int
) -> subprocess.Popen[str]:
    """``loadtest.slow_clients`` against ``port`` for ``seconds``, at ``nice``; its JSON tally
    is the last line of its output."""
    cmd = ["nice", "-n", str(nice)] if nice else []
    cmd += [sys.executable, "-m", "loadtest.slow_clients", "--port", str(port)]
    cmd += ["--connections", str(connections), "--seconds", f"{seconds:g}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _summary(result: WrkResult) -> dict[str, Any]:
    return {
        "p50_ms": result.latency_ms.get("p50"),
        "p99_ms": result.latency_ms.get("p99"),
        "throughput_rps": result.throughput_rps,
        "errors": result.errors,
    }


def measured(server: ManagedServer, listing: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run: its latency and throughput, the server's cores and its run-queue wait
    per request (time its threads were ready but had no CPU: the machine's share of the
    latency, not the server's)."""
    before = snapshot(server.pid, time.monotonic())
    result = run_wrk(server.url + "/classify", listing, args.wrk_connections, args.seconds)
    usage = usage_between(before, snapshot(server.pid, time.monotonic()))
    served = max(1.0, result.throughput_rps * usage.wall_seconds)
    return {
        **_summary(result),
        "server_cores": usage.cores,
        "server_wait_ms_per_request": 1000.0 * usage.runqueue_wait_seconds / served,
    }


def one_round(server: ManagedServer, listing: Path, args: argparse.Namespace) -> dict[str, Any]:
    """wrk idle, then wrk while the slow connections are open."""
    idle = measured(server, listing, args)
    attack = start_slow_clients(
        server.port, args.connections, args.ramp + args.seconds + 2.0, args.attacker_nice
    )
    try:
        time.sleep(args.ramp)
        flooded = measured(server, listing, args)
        out, err = attack.communicate(timeout=args.seconds + 60.0)
    finally:
        if attack.poll() is None:
            attack.kill()
    if attack.returncode != 0:
        raise RuntimeError(f"slow_clients failed ({attack.returncode}): {err[-2000:]}")
    return {
        "idle": idle,
        "flooded": flooded,
        "slow_clients": json.loads(out.strip().splitlines()[-1]),
    }


def verdict(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median idle and flooded p99 over the rounds, their ratio, met or missed."""
    idle = statistics.median(r["idle"]["p99_ms"] for r in rounds)
    flooded = statistics.median(r["flooded"]["p99_ms"] for r in rounds)
    ratio = flooded / idle if idle > 0 else float("inf")
    return {
        "idle_p99_ms": idle,
        "flooded_p99_ms": flooded,
        "ratio": ratio,
        "target": TARGET_P99_RATIO,
        "met": ratio <= TARGET_P99_RATIO,
    }


def _machine(info: dict[str, Any]) -> str:
    return f"{info['cpu']}, {info['cores']} cores, load {info['load_average']} at the start"


def _cells(condition: dict[str, Any]) -> str:
    return (
        f"{condition['p50_ms']:.2f} / {condition['p99_ms']:.2f} | "
        f"{condition['throughput_rps']:.0f} | {condition['server_cores']:.2f} | "
        f"{condition['server_wait_ms_per_request']:.2f}"
    )


def _cpus_text(cpus: list[int] | None) -> str:
    return ",".join(map(str, cpus)) if cpus else "any"


def _placement(cfg: dict[str, Any]) -> str:
    if not cfg.get("server_cpus") and not cfg.get("client_cpus"):
        return " Server and clients share every CPU."
    return (
        f" Server on CPUs {_cpus_text(cfg.get('server_cpus'))}, wrk and the slow clients on "
        f"CPUs {_cpus_text(cfg.get('client_cpus'))}."
    )


def markdown(report: dict[str, Any]) -> str:
    v, cfg = report["verdict"], report["config"]
    lines = [
        "# A normal client under a slow-connection flood",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {_machine(report['machine'])}. wrk with {cfg['wrk_connections']} "
        f"connections for {cfg['seconds']:g} s per condition; {cfg['connections']} slow "
        f"connections at nice {cfg['attacker_nice']}.{_placement(cfg)}",
        "",
        "| round | idle p50 / p99 ms | idle req/s | server cores | server CPU wait ms/req "
        "| slow connections open (mean, min) | flooded p50 / p99 ms | req/s | server cores "
        "| server CPU wait ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(report["rounds"], 1):
        idle, fl, sc = r["idle"], r["flooded"], r["slow_clients"]
        lines.append(
            f"| {i} | {_cells(idle)} | {sc['open_mean']:,}, {sc['open_min']:,} | {_cells(fl)} |"
        )
    met = "met" if v["met"] else "missed"
    lines += [
        "",
        f"Median p99: idle {v['idle_p99_ms']:.2f} ms, flooded {v['flooded_p99_ms']:.2f} ms, "
        f"ratio **{v['ratio']:.2f}** (target <= {v['target']:g}: {met}).",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.flood",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="wrk run per condition")
    p.add_argument("--connections", type=int, default=2000, help="slow connections")
    p.add_argument("--wrk-connections", type=int, default=2, help="the normal client's")
    p.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        help="run the slow clients at this nice level (19: they get only the CPU the server "
        "leaves, as if on another host; 0: they compete with the server as equals)",
    )
    p.add_argument(
        "--ramp",
        type=float,
        default=6.0,
        help="seconds between starting the slow clients and measuring (they spread their "
        "connects over min(5 s, their run / 4))",
    )
    p.add_argument(
        "--server-cpus",
        type=cpu_list,
        default=None,
        metavar="LIST",
        help="run the server on these CPUs only (e.g. 0 or 0-1; its workers default to as "
        "many); with --client-cpus, the load generators cannot take CPU from the server, as "
        "with an attacker on another host",
    )
    p.add_argument(
        "--client-cpus",
        type=cpu_list,
        default=None,
        metavar="LIST",
        help="run wrk and the slow clients on these CPUs only",
    )
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("reports/flood"))
    return p


def cpu_list(text: str) -> list[int]:
    """``0``, ``0,2`` or ``1-3``: CPUs this machine lets the process run on, sorted."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list like 0, 0,2 or 1-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise argparse.ArgumentTypeError(f"{text!r}: this machine allows CPUs {sorted(allowed)}")
    return sorted(cpus)


def run(args: argparse.Namespace, settings: dict[str, str]) -> dict[str, Any]:
    images = Images.fashion_mnist(args.data_dir, limit=64)
    items = [(images.png(i), {"Content-Type": "image/png"}) for i in range(len(images))]
    listing = write_request_set(args.out / "requests", items)
    server = ManagedServer(args.model, args.out / "server.log", **settings)
    if args.server_cpus:
        server.command_prefix = ["taskset", "-c", _cpus_text(args.server_cpus)]
    own_cpus = os.sched_getaffinity(0)
    with server:
        try:
            if args.client_cpus:  # wrk and the slow clients inherit it
                os.sched_setaffinity(0, args.client_cpus)
            rounds = _rounds(server, listing, args)
        finally:
            os.sched_setaffinity(0, own_cpus)
    return {"rounds": rounds, "verdict": verdict(rounds)}


def _rounds(server: ManagedServer, listing: Path, args: argparse.Namespace) -> list[dict]:
    run_wrk(server.url + "/classify", listing, args.wrk_connections, 2.0)  # warm-up
    rounds = []
    for i in range(args.rounds):
        rounds.append(one_round(server, listing, args))
        r = rounds[-1]
        print(
            f"round {i + 1}/{args.rounds}: p99 idle {r['idle']['p99_ms']:.2f} ms, "
            f"flooded {r['flooded']['p99_ms']:.2f} ms "
            f"({r['slow_clients']['open_mean']} slow connections open)",
            file=sys.stderr,
            flush=True,
        )
    return rounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings)
    except ValueError as err:
        parser.error(str(err))
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    try:
        result = run(args, settings)
    except (DatasetNotFoundError, WrkError) as err:
        print(f"flood: {err}", file=sys.stderr)
        return 2
    report = {
        "command": "python -m loadtest.flood " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "model")},
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flood.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "flood.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
