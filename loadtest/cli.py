"""``python -m loadtest`` (also ``abn-loadtest``): replay Fashion-MNIST test images against a
running service and write JSON, Markdown and a PNG plot.

Examples::

    python -m loadtest --url http://127.0.0.1:8000 --concurrency 32 --duration 30
    python -m loadtest --rate 50,100,200 --duration 20 --budgets 25%,50%,max --out reports/sweep
    python -m loadtest --rate 100 --requests 2000 --budgets uniform:min:max --widths adaptive \\
        --widths 4

Several comma-separated rates (or concurrencies) make a sweep: one run each, the same
requests replayed at every level, plotted as latency against offered load.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from abn.errors import DatasetNotFoundError
from loadtest.machine import machine_info
from loadtest.plots import plot_report
from loadtest.report import build_report, to_markdown, write_json
from loadtest.runner import (
    LoadConfig,
    RunResult,
    fetch_card,
    make_client,
    run_async,
    run_load,
    wait_ready,
)
from loadtest.workload import BudgetSpec, Images, ModelRange, Workload, WorkloadError, parse_widths

DEFAULT_BUDGETS = "min,25%,50%,75%,max"


def _numbers(text: str, kind: type) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers") from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: positive numbers")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Load generator for abn serve: real Fashion-MNIST test images as PNG, a mix "
        "of budgets and pinned widths, open or closed loop; reports throughput, latency "
        "percentiles, errors, BitOps against budget and accuracy per budget.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument(
        "--rate",
        type=lambda s: _numbers(s, float),
        help="open loop: requests per second; several (50,100,200) make a sweep",
    )
    load.add_argument(
        "--concurrency",
        type=lambda s: _numbers(s, int),
        help="closed loop: concurrent requests; several make a sweep",
    )
    p.add_argument("--duration", type=float, help="seconds per run (no new request after it)")
    p.add_argument("--requests", type=int, help="requests per run (at most)")
    p.add_argument(
        "--budgets",
        default=DEFAULT_BUDGETS,
        help="budget mix: a list (25M,50M,max; tokens: number with K/M/G, min, max, P%% of the "
        "model's range, none) or uniform:LO:HI / loguniform:LO:HI "
        f"(default {DEFAULT_BUDGETS.replace('%', '%%')})",
    )
    p.add_argument("--budget-bins", type=int, default=5, help="report bins for a distribution")
    p.add_argument(
        "--widths",
        action="append",
        default=[],
        help="X-Bit-Widths to mix in, repeatable: adaptive (no header), 4, or 8,4,4,... "
        "(default: adaptive only)",
    )
    p.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson")
    p.add_argument("--seed", type=int, default=0, help="image order, budgets, widths, arrivals")
    p.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX directory (default: Debian's)")
    p.add_argument("--images", type=int, help="use only the first N test images")
    p.add_argument("--out", type=Path, default=Path("loadtest-report"), help="report directory")
    p.add_argument("--name", default="loadtest", help="file stem of the report files")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument("--connections", type=int, default=256, help="open-loop connection cap")
    p.add_argument(
        "--api-key",
        default=os.environ.get("ABN_API_KEY") or None,
        help="bearer key (default: $ABN_API_KEY)",
    )
    p.add_argument("--wait-ready", type=float, default=30.0, help="seconds to wait for /readyz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def load_configs(args: argparse.Namespace) -> list[LoadConfig]:
    if args.rate:
        return [
            LoadConfig(
                "open",
                rate=r,
                duration=args.duration,
                requests=args.requests,
                arrivals=args.arrivals,
                seed=args.seed,
            )
            for r in args.rate
        ]
    return [
        LoadConfig("closed", concurrency=c, duration=args.duration, requests=args.requests)
        for c in args.concurrency
    ]


async def execute(
    args: argparse.Namespace, images: Images, command: str | None = None
) -> dict[str, Any]:
    """Every run of the sweep against ``args.url``; the report as a dict."""
    configs = load_configs(args)
    connections = max([args.connections] + [c.concurrency or 0 for c in configs])
    async with make_client(
        args.url, connections=connections, timeout=args.timeout, api_key=args.api_key
    ) as client:
        await wait_ready(client, args.wait_ready)
        card = await fetch_card(client)
        model = ModelRange.from_card(card)
        budgets = BudgetSpec.parse(args.budgets, model, bins=args.budget_bins)
        widths = parse_widths(args.widths, model)
        workload = Workload(images, budgets, widths, seed=args.seed)
        results: list[RunResult] = []
        progress = False if args.no_progress else None  # None: tqdm decides (a terminal)
        for config in configs:
            results.append(await run_load(client, workload, config, progress=progress))
    return build_report(
        results,
        url=args.url,
        card=card,
        workload={
            "budgets": args.budgets,
            "widths": [w or "adaptive" for w in widths],
            "seed": args.seed,
            "images": len(images),
        },
        machine=machine_info(),
        command=command,
    )


def write_outputs(report: dict[str, Any], out: Path, name: str, plot: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    write_json(report, paths[0])
    plot_name = None
    if plot:
        png = plot_report(report, out / f"{name}.png")
        plot_name = png.name
        paths.append(png)
    paths[1].write_text(to_markdown(report, plot_name))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.duration is None and args.requests is None:
        parser.error("bound the run with --duration and/or --requests")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "loadtest", *argv_list])
    try:
        images = Images.fashion_mnist(args.data_dir, args.images)
    except DatasetNotFoundError as err:
        print(f"loadtest: {err}", file=sys.stderr)
        return 2
    try:
        report = run_async(execute(args, images, command))
    except WorkloadError as err:
        print(f"loadtest: {err}", file=sys.stderr)
        return 2
    except (TimeoutError, httpx.HTTPError) as err:
        print(f"loadtest: cannot use the service at {args.url}: {err}", file=sys.stderr)
        return 1
    paths = write_outputs(report, args.out, args.name, plot=not args.no_plot)
    for run in report["runs"]:
        lat = run["latency_ms"]
        print(
            f"{run['config']['label']}: {run['ok']}/{run['sent']} ok, "
            f"{run['throughput_rps']:.1f} req/s, p50 {lat['p50'] or 0:.1f} ms, "
            f"p99 {lat['p99'] or 0:.1f} ms, errors {run['errors'] or 'none'}"
        )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
