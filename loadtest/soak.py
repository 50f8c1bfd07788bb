"""Soak test: a moderate steady load for a long time, watching the server's memory and latency.

A leak or a slowly filling structure (a cache, a metrics label set, the feedback store) does
not show in a 20-second benchmark; it shows as resident memory that keeps climbing over half
an hour. This script runs the load generator in back-to-back windows (default: 30 windows of
60 s, open loop at 20 req/s), and after each window records the server's resident memory
(VmRSS and VmHWM of ``/proc/<pid>/status``, summed over the server's processes) and that
window's latency percentiles. At the end: a PNG of both curves, the samples as JSON, a short
Markdown page and a verdict.

The verdict is a least-squares line through the resident memory of every window after the
first ``--skip`` fraction of the run (allocators and caches grow to their working set first):
``growing`` when the slope exceeds ``--tolerance`` MiB per hour, the line explains at least half
the variance (R^2 >= 0.5) and it rises at least 2 MiB over the fitted span, so a single step,
noise, or a few pages in a short run do not condemn a flat server;
``flat`` otherwise; ``inconclusive`` with fewer than 3 samples to fit.

Not part of the tests or of ``make bench`` (it takes half an hour by design)::

    python -m loadtest.soak --model model_store/fmnist-abn            # starts its own server
    python -m loadtest.soak --url http://host:8000 --pid 12345        # a server already running
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from abn.errors import DatasetNotFoundError
from abn.store import DEFAULT_MODEL_DIR
from loadtest.machine import machine_info
from loadtest.proctree import tree_memory_mib
from loadtest.report import error_key, latency_ms
from loadtest.runner import LoadConfig, fetch_card, make_client, run_async, run_load, wait_ready
from loadtest.server import ManagedServer, parse_settings
from loadtest.workload import BudgetSpec, Images, ModelRange, Workload, parse_widths


def memory_verdict(
    minutes: Sequence[float],
    rss_mib: Sequence[float | None],
    *,
    skip: float = 0.2,
    tolerance_mib_per_hour: float = 10.0,
    min_growth_mib: float = 2.0,
) -> dict[str, Any]:
    """``flat``, ``growing`` or ``inconclusive``, with the fitted slope and R^2 (see module)."""
    points = [(t, m) for t, m in zip(minutes, rss_mib, strict=True) if m is not None]
    if points:
        start = points[0][0] + skip * (points[-1][0] - points[0][0])
        points = [(t, m) for t, m in points if t >= start]
    rule = (
        f"growing if the least-squares slope after the first {skip:.0%} of the run exceeds "
        f"{tolerance_mib_per_hour:g} MiB/hour, R^2 >= 0.5 and the fitted line rises at least "
        f"{min_growth_mib:g} MiB over the fitted span"
    )
    if len(points) < 3:
        return {"verdict": "inconclusive", "reason": "fewer than 3 samples", "rule": rule}
    t = np.array([p[0] for p in points])
    m = np.array([p[1] for p in points])
    slope, intercept = np.polyfit(t, m, 1)
    fitted = slope * t + intercept
    total = float(((m - m.mean()) ** 2).sum())
    r2 = 1.0 - float(((m - fitted) ** 2).sum()) / total if total > 0 else 0.0
    per_hour = float(slope) * 60.0
    rise = float(slope) * float(t[-1] - t[0])
    growing = per_hour > tolerance_mib_per_hour and r2 >= 0.5 and rise >= min_growth_mib
    return {
        "verdict": "growing" if growing else "flat",
        "slope_mib_per_hour": per_hour,
        "intercept_mib": float(intercept),
        "r2": r2,
        "fitted_rise_mib": rise,
        "samples_fitted": len(points),
        "fit_from_minute": float(t[0]),
        "rule": rule,
    }


def rss_of(pid: int | None) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) in MiB summed over ``pid`` and every process it started: with
    ``ABN_WORKERS`` the server's first process is a small supervisor and the models live in its
    worker processes, so the first process alone would watch the wrong memory."""
    if pid is None:
        return None, None
    return tree_memory_mib(pid, "VmRSS"), tree_memory_mib(pid, "VmHWM")


async def soak(args: argparse.Namespace, url: str, pid: int | None) -> dict[str, Any]:
    images = Images.fashion_mnist(args.data_dir)
    windows = max(1, round(args.duration / args.interval))
    samples: list[dict[str, Any]] = []
    async with make_client(url, timeout=args.timeout, api_key=args.api_key) as client:
        await wait_ready(client, 60.0)
        card = await fetch_card(client)
        model = ModelRange.from_card(card)
        workload = Workload(
            images, BudgetSpec.parse(args.budgets, model), parse_widths(args.widths, model)
        )
        rss0, _ = rss_of(pid)
        samples.append({"minute": 0.0, "rss_mib": rss0, "hwm_mib": rss0, "sent": 0})
        t0 = time.monotonic()
        sent = 0
        for w in range(windows):
            config = LoadConfig("open", rate=args.rate, duration=args.interval, seed=args.seed + w)
            result = await run_load(client, workload, config, first_index=sent, progress=False)
            sent += len(result.records)
            ok = [r for r in result.records if r.status == 200]
            rss, hwm = rss_of(pid)
            sample = {
                "minute": (time.monotonic() - t0) / 60.0,
                "rss_mib": rss,
                "hwm_mib": hwm,
                "sent": len(result.records),
                "ok": len(ok),
                "throughput_rps": len(ok) / max(result.wall_seconds, 1e-9),
                "errors": _count(error_key(r) for r in result.records if r.status != 200),
                "latency_ms": latency_ms([r.latency for r in ok]),
            }
            samples.append(sample)
            lat = sample["latency_ms"]
            print(
                f"soak {w + 1}/{windows}: {sample['minute']:.1f} min, RSS "
                f"{_num(rss, '.1f')} MiB, p50 {_num(lat['p50'], '.1f')} ms, "
                f"p99 {_num(lat['p99'], '.1f')} ms, {sample['ok']}/{sample['sent']} ok",
                file=sys.stderr,
                flush=True,
            )
    verdict = memory_verdict(
        [s["minute"] for s in samples],
        [s["rss_mib"] for s in samples],
        skip=args.skip,
        tolerance_mib_per_hour=args.tolerance,
    )
    if pid is None:
        verdict = {"verdict": "unknown", "reason": "no server pid, so no memory readings"}
    return {
        "tool": "loadtest.soak",
        "url": url,
        "model": {k: card.get(k) for k in ("name", "version")},
        "load": {"rate": args.rate, "budgets": args.budgets, "widths": args.widths or ["adaptive"]},
        "interval_seconds": args.interval,
        "duration_seconds": args.duration,
        "machine": machine_info(),
        "samples": samples,
        "memory": verdict,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["minute"] for s in samples]
    fig, (ax_mem, ax_lat) = plt.subplots(1, 2, figsize=(13, 4.5))
    rss = [s["rss_mib"] if s["rss_mib"] is not None else float("nan") for s in samples]
    ax_mem.plot(t, rss, "o-", label="VmRSS")
    verdict = report["memory"]
    if "slope_mib_per_hour" in verdict:
        x = np.array([verdict["fit_from_minute"], t[-1]])
        y = verdict["intercept_mib"] + verdict["slope_mib_per_hour"] / 60.0 * x
        ax_mem.plot(x, y, "--", label=f"fit {verdict['slope_mib_per_hour']:+.1f} MiB/h")
    ax_mem.set_xlabel("minutes")
    ax_mem.set_ylabel("resident memory (MiB)")
    ax_mem.set_title(f"server memory: {verdict['verdict']}")
    ax_mem.legend()
    timed = [s for s in samples if "latency_ms" in s]
    for p in ("p50", "p90", "p99"):
        values = [
            s["latency_ms"][p] if s["latency_ms"][p] is not None else float("nan") for s in timed
        ]
        ax_lat.plot([s["minute"] for s in timed], values, "o-", label=p)
    ax_lat.set_xlabel("minutes")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_title(f"latency per window at {report['load']['rate']:g} req/s")
    ax_lat.legend()
    for ax in (ax_mem, ax_lat):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(report: dict[str, Any]) -> str:
    v = report["memory"]
    lines = [
        f"# Soak: {report['model']['name']} {report['model']['version']}",
        "",
        f"{report['duration_seconds'] / 60:g} minutes at {report['load']['rate']:g} req/s "
        f"(budgets `{report['load']['budgets']}`), "
        f"one sample per {report['interval_seconds']:g} s. "
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['date']}.",
        "",
        f"**Memory: {v['verdict']}**"
        + (
            f" (slope {v['slope_mib_per_hour']:+.2f} MiB/hour, R^2 {v['r2']:.2f}, "
            f"{v['samples_fitted']} samples; rule: {v['rule']})"
            if "slope_mib_per_hour" in v
            else f" ({v.get('reason', '')})"
        ),
        "",
        "| minute | RSS MiB | peak MiB | ok/sent | req/s | p50 ms | p90 ms | p99 ms | errors |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for s in report["samples"][1:]:
        lat = s["latency_ms"]
        errors = ", ".join(f"{k}: {n}" for k, n in s["errors"].items()) or "none"
        lines.append(
            f"| {s['minute']:.1f} | {_num(s['rss_mib'], '.1f')} | {_num(s['hwm_mib'], '.1f')} "
            f"| {s['ok']}/{s['sent']} | {s['throughput_rps']:.1f} | {_num(lat['p50'], '.1f')} "
            f"| {_num(lat['p90'], '.1f')} | {_num(lat['p99'], '.1f')} | {errors} |"
        )
    lines += ["", "![memory and latency over time](soak.png)", ""]
    return "\n".join(lines)


def _count(keys: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return out


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--model", type=Path, help="start abn serve on this model directory (default: shipped)"
    )
    target.add_argument("--url", help="a server that is already running (give --pid for memory)")
    p.add_argument("--pid", type=int, help="pid of the --url server, to read its memory")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="setting of the started server, e.g. --set torch_threads=1 (or ABN_TORCH_THREADS=1); "
        "an unknown name stops the run",
    )
    p.add_argument("--duration", type=float, default=1800.0, help="seconds (default 30 min)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds per sample")
    p.add_argument("--rate", type=float, default=20.0, help="open-loop requests per second")
    p.add_argument("--budgets", default="min,25%,50%,75%,max")
    p.add_argument("--widths", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", type=float, default=0.2, help="warm-up fraction left out of the fit")
    p.add_argument("--tolerance", type=float, default=10.0, help="MiB/hour still called flat")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--api-key")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("soak-report"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if args.url:
            report = run_async(soak(args, args.url, args.pid))
        else:
            try:
                settings = parse_settings(args.set)
            except ValueError as err:
                print(f"soak: {err}", file=sys.stderr)
                return 2
            model = args.model or DEFAULT_MODEL_DIR
            with ManagedServer(model, args.out / "server.log", **settings) as server:
                report = run_async(soak(args, server.url, server.pid))
    except DatasetNotFoundError as err:
        print(f"soak: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as err:
        print(f"soak: {err}", file=sys.stderr)
        return 1
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "soak.png")
    (args.out / "soak.md").write_text(to_markdown(report))
    print(f"memory: {report['memory']['verdict']}; wrote {args.out}/soak.json, soak.md, soak.png")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
