"""What handing each job to one model process costs: ``ABN_MODEL_PROCESS=shared`` against
``per-worker``, both with ``ABN_WORKERS=2``, measured with ``wrk``.

Why this way: the shared mode exists for GPUs (one model copy for every front end), but what
it adds per request (a frame each way over a Unix socket, a second event loop) is the same on
any machine, and on CPU it can be measured against the mode it would replace. Both servers run
the shipped model side by side, each warmed once; every round then measures each in turn
(the order alternating from round to round) for latency with one connection (c=1: the
hand-off on the critical path of every request) and throughput with 32 (c=32), all requests
pinned to one width so both do the same work, while the other server idles. The figures are
ratios within a round (shared / per-worker) and their median, so the drift of a shared, noisy
machine cancels as far as it can: many short rounds beat a few long ones.

    python -m loadtest.handoff --rounds 8 --seconds 5 --out runs/handoff.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from abn.store import DEFAULT_MODEL_DIR
from loadtest.machine import machine_info
from loadtest.server import ManagedServer
from loadtest.workload import Images
from loadtest.wrk import WrkResult, run_wrk, write_request_set

MODES = ("per-worker", "shared")
WARM_SECONDS = 3  # wrk at c=8 on each server before the rounds
# what each round reports, and where in a wrk result it is
FIGURES = {
    "c1_p50_ms": lambda r: r.latency_ms["p50"],
    "c1_p99_ms": lambda r: r.latency_ms["p99"],
    "c32_rps": lambda r: r.throughput_rps,
    "c32_p50_ms": lambda r: r.latency_ms["p50"],
}


def warm(server: ManagedServer, listing: Path) -> None:
    """Caches, the allocator, the batcher's moving average: before any figure counts."""
    run_wrk(server.url + "/classify", listing, 8, WARM_SECONDS)


def measure(server: ManagedServer, listing: Path, seconds: float) -> dict[str, float]:
    """One server's figures: c=1 latency, c=32 throughput and latency, no errors allowed."""
    runs: dict[int, WrkResult] = {
        c: run_wrk(server.url + "/classify", listing, c, seconds) for c in (1, 32)
    }
    for run in runs.values():
        if run.errors.get("status") or run.ok == 0:
            raise RuntimeError(f"{run.connections} connections: errors {run.errors}")
    return {
        name: float(get(runs[1 if name.startswith("c1") else 32])) for name, get in FIGURES.items()
    }


def run_rounds(
    model: Path, rounds: int, seconds: float, bits: int, threads: int, work: Path
) -> dict[str, Any]:
    """Both servers up; every round measures each in turn (the order alternating)."""
    images = Images.fashion_mnist(limit=256)
    headers = {"Content-Type": "image/png", "X-Bit-Widths": str(bits)}
    listing = write_request_set(work / "requests", ((images.png(i), headers) for i in range(256)))
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {
            mode: stack.enter_context(
                ManagedServer(
                    model,
                    work / f"{mode}.log",
                    workers=2,
                    model_process=mode,
                    torch_threads=threads,
                )
            )
            for mode in MODES
        }
        for server in servers.values():
            warm(server, listing)
        for r in range(rounds):
            row: dict[str, Any] = {"round": r + 1}
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                row[mode] = measure(servers[mode], listing, seconds)
            row["ratio"] = {k: row["shared"][k] / row["per-worker"][k] for k in FIGURES}
            print(f"round {r + 1}: {row}", file=sys.stderr, flush=True)
            results.append(row)
    median = {k: statistics.median(row["ratio"][k] for row in results) for k in FIGURES}
    return {
        "machine": machine_info(),
        "settings": {"bits": bits, "seconds": seconds, "torch_threads": threads},
        "rounds": results,
        "median_ratio": median,
    }


def table(report: dict[str, Any]) -> str:
    """The rounds and the median ratios as a Markdown table."""
    lines = [
        "| round | mode | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p50 ms |",
        "|---" * 6 + "|",
    ]
    for row in report["rounds"]:
        for mode in (*MODES, "ratio"):
            f = row[mode]
            lines.append(
                f"| {row['round']} | {mode} | {f['c1_p50_ms']:.3g} | {f['c1_p99_ms']:.3g} | "
                f"{f['c32_rps']:.4g} | {f['c32_p50_ms']:.3g} |"
            )
    m = report["median_ratio"]
    lines.append(
        f"| median | shared / per-worker | {m['c1_p50_ms']:.3g} | {m['c1_p99_ms']:.3g} | "
        f"{m['c32_rps']:.3g} | {m['c32_p50_ms']:.3g} |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.handoff", description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--bits", type=int, default=4, help="the width every request is pinned to")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="ABN_TORCH_THREADS of every process: the same model work per image in both modes",
    )
    p.add_argument("--out", type=Path, help="the report as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="abn-handoff-") as work:
        report = run_rounds(
            args.model, args.rounds, args.seconds, args.bits, args.torch_threads, Path(work)
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
