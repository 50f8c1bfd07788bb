"""``docs/benchmarks.md`` from one bench run's results (what ``bench.json`` holds).

Generated, never edited by hand: the page is whatever the last ``make bench`` measured, with
the machine and its load, so figures from a busy machine say so on their face.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from loadtest import bench_figures as bf
from loadtest.peers.registry import PEERS
from loadtest.report import groups_table
from loadtest.wrk import LUA_SCRIPT, TIMEOUT_SECONDS

IDLE_LOAD = 0.5  # a load average above this at the start: other work shared the cores


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _x(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def title(server: str) -> str:
    return "this service (`abn serve`)" if server == bf.SERVICE else PEERS[server].title


def _mean(results: dict[str, Any], server: str, load: str, conc: int) -> dict[str, Any]:
    for m in results["means"]:
        if (m["server"], m["load"], m["connections"]) == (server, load, conc):
            return m
    return {}


def _header(results: dict[str, Any], argv: Sequence[str]) -> list[str]:
    m, c, model = results["machine"], results["config"], results["model"]
    suite = shlex.join(["python", "-m", "loadtest.bench", *argv])
    load0 = float(m["load_average"].split()[0])
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`{suite}`, see `loadtest/bench.py`) on {m['date']}: every "
        f"figure below comes from this one run. Model: `{model['name']}` {model['version']} "
        f"from `{c['model']}`, every server on the CPU with {c['torch_threads']} torch "
        "thread(s) per process.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| torch | {m['torch']} |",
        f"| Python | {m['python']} |",
        f"| OS | {m['os']} |",
        f"| load average at start | {m['load_average']} |",
        f"| load average at end | {results.get('load_average_end', 'n/a')} |",
        "",
    ]
    if load0 > IDLE_LOAD:
        lines += [
            f"**Not an idle machine:** the load average was {load0:.2f} at the start (other work "
            "shared the cores), so these figures are lower and noisier than the machine's. "
            "Ratios between servers measured in the same rounds hold up better than absolute "
            "figures.",
            "",
        ]
    return lines


def _target_detail(results: dict[str, Any], key: str) -> str:
    """The absolute figures behind a ratio."""

    def lat(server: str, conc: int, p: str) -> str:
        return _f(_mean(results, server, bf.PINNED, conc).get(f"{p}_ms")) + " ms"

    means = {(m["server"], m["load"], m["connections"]): m for m in results["means"]}
    rss = results["peak_rss_mib"]
    if key == "c1_p50_vs_naive":
        return f"{lat(bf.SERVICE, 1, 'p50')} / {lat('naive', 1, 'p50')}"
    if key in ("saturation_vs_litserve", "saturation_vs_lean"):
        peer = "litserve" if key == "saturation_vs_litserve" else "lean"
        return (
            f"{_f(bf.saturation(means, bf.SERVICE), '.0f')} / "
            f"{_f(bf.saturation(means, peer), '.0f')} req/s"
        )
    if key == "c32_p99_vs_litserve":
        return f"{lat(bf.SERVICE, 32, 'p99')} / {lat('litserve', 32, 'p99')}"
    if key == "adaptive_overhead":
        near = results.get("pinned_nearest", {})
        conc = bf.CONCURRENCY_ADAPTIVE
        a = _mean(results, bf.SERVICE, bf.ADAPTIVE, conc).get("throughput_rps")
        p = _mean(results, bf.SERVICE, bf.PINNED_NEAREST, conc).get("throughput_rps")
        return (
            f"adaptive {_f(a, '.0f')} vs pinned {near.get('bits')}-bit {_f(p, '.0f')} req/s at "
            f"concurrency {conc}; {_f((near.get('adaptive_mean_bitops') or 0) / 1e6)}M vs "
            f"{_f((near.get('cost') or 0) / 1e6)}M BitOps"
        )
    return f"{_f(rss.get(bf.SERVICE), '.0f')} / {_f(rss.get('litserve'), '.0f')} MiB"


def _targets(results: dict[str, Any]) -> list[str]:
    f = results["figures"]
    lines = [
        "## Targets",
        "",
        "| figure | measured | target | verdict |",
        "|---|---|---|---|",
    ]
    for key, t in bf.TARGETS.items():
        value = f[key]
        percent = key == "adaptive_overhead"  # a share of throughput, not a ratio
        shown = f"{100 * value:+.1f}%" if percent and value is not None else _f(value, ".2f")
        target = f"{t.op} {100 * t.value:.0f}%" if percent else f"{t.op} {t.value:g}"
        lines.append(
            f"| {t.name} | {shown} ({_target_detail(results, key)}) | {target} "
            f"| {t.verdict(value)} |"
        )
    lines += [""]
    missing = {k: v for k, v in results["peers"].items() if not v.startswith("measured")}
    lines += [f"- {k}: {v}" for k, v in missing.items()]
    return [*lines, ""] if missing else lines


def _side_by_side(results: dict[str, Any]) -> list[str]:
    """Every server, every concurrency: its figures and their ratio to the service's."""
    lines = [
        "## Side by side: each figure and its ratio to the service's",
        "",
        "Means over the rounds; pinned requests (the same images, every layer at "
        f"{results['config']['bits']} bits) unless the load column says otherwise. Ratios "
        "are peer / service at the same concurrency.",
        "",
        "| server | load | connections | req/s | p50 ms | p99 ms | server CPU ms/request "
        "| cores used | client CPU ms/request |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results["means"]:
        base = _mean(results, bf.SERVICE, m["load"], m["connections"])
        cells = []
        for key, fmt in (
            ("throughput_rps", ".0f"),
            ("p50_ms", ".1f"),
            ("p99_ms", ".1f"),
            ("server_cpu_ms_per_request", ".2f"),
            ("server_cores", ".2f"),
        ):
            r = None if m["server"] == bf.SERVICE else bf.ratio(m[key], base.get(key))
            cells.append(_f(m[key], fmt) + _x(r))
        cells.append(_f(m["client_cpu_ms_per_request"], ".3f"))
        lines.append(
            f"| {title(m['server'])} | {m['load']} | {m['connections']} | "
            + " | ".join(cells)
            + " |"
        )
    rss = results["peak_rss_mib"]
    lines += ["", "| server | peak resident memory, all its processes |", "|---|---:|"]
    for server, mib in rss.items():
        r = None if server == bf.SERVICE else bf.ratio(mib, rss.get(bf.SERVICE))
        lines.append(f"| {title(server)} | {_f(mib, '.0f')} MiB{_x(r)} |")
    return [*lines, ""]


def _how(results: dict[str, Any]) -> list[str]:
    c = results["config"]
    commands = results.get("commands", {})
    env = {"ABN_DEVICE": "cpu", "ABN_TORCH_THREADS": c["torch_threads"], **c["settings"]}
    settings = " ".join(f"{k}={v}" for k, v in env.items())
    lua = LUA_SCRIPT.relative_to(LUA_SCRIPT.parents[1])
    near = results.get("pinned_nearest", {})
    return [
        "## How it was measured",
        "",
        f"{c['rounds']} round(s); in each, one server at a time, always in this order: the "
        f"service, then {', '.join(commands) or 'no peer'}; against each a "
        f"{c['warmup_seconds']:g} s wrk warm-up at {c['warmup_connections']} connections, then "
        f"{c['run_seconds']:g} s of wrk per concurrency "
        f"({', '.join(map(str, c['concurrencies']))}). The service also gets, at concurrency "
        f"{bf.CONCURRENCY_ADAPTIVE}, "
        f"the budget mix `{c['budgets']}` (adaptive) and the same images pinned to "
        f"{near.get('bits')} bits, the uniform width closest to what adaptive requests spent. "
        f"The {c['requests']} requests wrk cycles through are the seeded workload (seed "
        f"{c['seed']}) of Fashion-MNIST test images as PNG, the same for every server; LitServe "
        'takes them as `{"image": base64}` JSON (it has no raw-body mode), the others as the '
        "PNG body.",
        "",
        "Server CPU and cores used are summed over the server's whole process tree "
        "(`/proc/<pid>/stat`, before and after each run); client CPU is wrk's own (`wait4`); "
        "peak memory is the sum of `VmHWM` over the server's processes after its last run. "
        "Throughput counts answers with status < 400; none of the runs had errors unless the "
        "runs table says so.",
        "",
        "By hand (the bench leaves its request lists under its `--work-dir`, "
        f"`{c['work_dir']}/<set>/requests.tsv`):",
        "",
        "```",
        f"{settings} abn serve --model {c['model']} --port 8000",
        *commands.values(),
        f"wrk -t1 -c32 -d{c['run_seconds']:g}s --timeout={TIMEOUT_SECONDS}s --latency -s {lua} "
        f"http://127.0.0.1:8000/classify -- {c['work_dir']}/pinned-png/requests.tsv",
        f"python -m loadtest --url http://127.0.0.1:8000 --concurrency "
        f"{c['generator_concurrency']} --duration {c['run_seconds']:g} --budgets "
        f"'{c['budgets']}' --seed {c['seed']}",
        "```",
        "",
    ]


def _accuracy(reports: dict[str, Any], rel: str) -> list[str]:
    run = reports["accuracy"]["runs"][0]
    return [
        "## Accuracy and BitOps per budget (the Python generator, adaptive requests)",
        "",
        f"Closed loop at concurrency {run['config']['concurrency']}, "
        f"{run['ok']} answers; every answer read, scored against the true label.",
        "",
        *groups_table(run["groups"]),
        "",
        f"![latency, accuracy and BitOps per budget]({rel}/accuracy.png)",
        "",
    ]


def _runs(results: dict[str, Any], rel: str) -> list[str]:
    lines = [
        "## Every run",
        "",
        "| round | server | load | connections | req/s | p50 ms | p99 ms | errors "
        "| server CPU ms/request | cores | client CPU ms/request |",
        "|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results["runs"]:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items() if v) or "none"
        lines.append(
            f"| {r['round'] + 1} | {r['server']} | {r['load']} | {r['connections']} "
            f"| {r['throughput_rps']:.0f} | {_f(r['latency_ms']['p50'])} "
            f"| {_f(r['latency_ms']['p99'])} | {errors} "
            f"| {_f(r['server_cpu_ms_per_request'], '.2f')} | {r['server_cores']:.2f} "
            f"| {_f(r['client_cpu_ms_per_request'], '.3f')} |"
        )
    return [*lines, "", f"Raw results: [`{rel}/bench.json`]({rel}/bench.json).", ""]


def render(results: dict[str, Any], reports: dict[str, Any], argv: Sequence[str], rel: str) -> str:
    """The whole page; ``rel`` is the artifacts folder relative to the page."""
    return "\n".join(
        [
            *_header(results, argv),
            *_targets(results),
            *_side_by_side(results),
            *_accuracy(reports, rel),
            *_how(results),
            *_runs(results, rel),
        ]
    )
