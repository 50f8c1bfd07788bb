"""``docs/benchmarks.md`` from one bench run's results (what ``bench.json`` holds).

Generated, never edited by hand: the page is whatever the last ``make bench`` measured, with
the machine and its load, so figures from a busy machine say so on their face.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

from loadtest import bench_figures as bf
from loadtest.peers.registry import PEERS
from loadtest.report import groups_table
from loadtest.wrk import LUA_SCRIPT, TIMEOUT_SECONDS

IDLE_LOAD = 0.5  # a load average above this at the start: other work shared the cores
PAGE_TEMPLATE = Template((Path(__file__).parent / "templates" / "benchmarks.md").read_text())


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


BUSY_NOTE = (
    "**Not an idle machine:** the load average was {load:.2f} at the start (other work shared "
    "the cores), so these figures are lower and noisier than the machine's. Ratios between "
    "servers measured in the same rounds hold up better than absolute figures.\n\n"
)


def _header(results: dict[str, Any], argv: Sequence[str]) -> dict[str, object]:
    m, c, model = results["machine"], results["config"], results["model"]
    load0 = float(m["load_average"].split()[0])
    return {
        "suite": shlex.join(["python", "-m", "loadtest.bench", *argv]),
        "date": m["date"],
        "model_name": model["name"],
        "model_version": model["version"],
        "model_dir": c["model"],
        "torch_threads": c["torch_threads"],
        "backend": model.get("backend", "float"),
        **{key: m[key] for key in ("cpu", "cores", "torch", "python", "os", "load_average")},
        "load_average_end": results.get("load_average_end", "n/a"),
        "busy_note": BUSY_NOTE.format(load=load0) if load0 > IDLE_LOAD else "",
    }


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


def _targets(results: dict[str, Any]) -> dict[str, object]:
    f = results["figures"]
    rows = []
    for key, t in bf.TARGETS.items():
        value = f[key]
        percent = key == "adaptive_overhead"  # a share of throughput, not a ratio
        shown = f"{100 * value:+.1f}%" if percent and value is not None else _f(value, ".2f")
        target = f"{t.op} {100 * t.value:.0f}%" if percent else f"{t.op} {t.value:g}"
        rows.append(
            f"| {t.name} | {shown} ({_target_detail(results, key)}) | {target} "
            f"| {t.verdict(value)} |"
        )
    missing = [f"- {k}: {v}\n" for k, v in results["peers"].items() if not v.startswith("measured")]
    return {"targets": "\n".join(rows), "missing_peers": "".join(missing) + "\n" * bool(missing)}


def _side_by_side(results: dict[str, Any]) -> dict[str, object]:
    """Every server, every concurrency: its figures and their ratio to the service's."""
    rows = []
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
        rows.append(
            f"| {title(m['server'])} | {m['load']} | {m['connections']} | "
            + " | ".join(cells)
            + " |"
        )
    rss = results["peak_rss_mib"]
    memory = []
    for server, mib in rss.items():
        r = None if server == bf.SERVICE else bf.ratio(mib, rss.get(bf.SERVICE))
        memory.append(f"| {title(server)} | {_f(mib, '.0f')} MiB{_x(r)} |")
    return {
        "bits": results["config"]["bits"],
        "side_by_side": "\n".join(rows),
        "memory": "\n".join(memory),
    }


def _how(results: dict[str, Any]) -> dict[str, object]:
    c = results["config"]
    commands = results.get("commands", {})
    env = {"ABN_DEVICE": "cpu", "ABN_TORCH_THREADS": c["torch_threads"], **c["settings"]}
    settings = " ".join(f"{k}={v}" for k, v in env.items())
    lua = LUA_SCRIPT.relative_to(LUA_SCRIPT.parents[1])
    by_hand = [
        f"{settings} abn serve --model {c['model']} --port 8000",
        *commands.values(),
        f"wrk -t1 -c32 -d{c['run_seconds']:g}s --timeout={TIMEOUT_SECONDS}s --latency -s {lua} "
        f"http://127.0.0.1:8000/classify -- {c['work_dir']}/pinned-png/requests.tsv",
        f"python -m loadtest --url http://127.0.0.1:8000 --concurrency "
        f"{c['generator_concurrency']} --duration {c['run_seconds']:g} --budgets "
        f"'{c['budgets']}' --seed {c['seed']}",
    ]
    return {
        "rounds": c["rounds"],
        "peers": ", ".join(commands) or "no peer",
        "warmup_seconds": f"{c['warmup_seconds']:g}",
        "warmup_connections": c["warmup_connections"],
        "run_seconds": f"{c['run_seconds']:g}",
        "concurrencies": ", ".join(map(str, c["concurrencies"])),
        "adaptive_concurrency": bf.CONCURRENCY_ADAPTIVE,
        "budgets": c["budgets"],
        "nearest_bits": results.get("pinned_nearest", {}).get("bits"),
        "requests": c["requests"],
        "seed": c["seed"],
        "work_dir": c["work_dir"],
        "commands": "\n".join(by_hand),
    }


def _accuracy(reports: dict[str, Any]) -> dict[str, object]:
    run = reports["accuracy"]["runs"][0]
    return {
        "generator_concurrency": run["config"]["concurrency"],
        "answers": run["ok"],
        "accuracy_table": "\n".join(groups_table(run["groups"])),
    }


def _runs(results: dict[str, Any]) -> dict[str, object]:
    rows = []
    for r in results["runs"]:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items() if v) or "none"
        rows.append(
            f"| {r['round'] + 1} | {r['server']} | {r['load']} | {r['connections']} "
            f"| {r['throughput_rps']:.0f} | {_f(r['latency_ms']['p50'])} "
            f"| {_f(r['latency_ms']['p99'])} | {errors} "
            f"| {_f(r['server_cpu_ms_per_request'], '.2f')} | {r['server_cores']:.2f} "
            f"| {_f(r['client_cpu_ms_per_request'], '.3f')} |"
        )
    return {"runs": "\n".join(rows)}


def render(results: dict[str, Any], reports: dict[str, Any], argv: Sequence[str], rel: str) -> str:
    """The whole page (the prose is ``templates/benchmarks.md``, the tables are built here);
    ``rel`` is the artifacts folder relative to the page."""
    return PAGE_TEMPLATE.substitute(
        _header(results, argv),
        **_targets(results),
        **_side_by_side(results),
        **_accuracy(reports),
        **_how(results),
        **_runs(results),
        rel=rel,
    )
