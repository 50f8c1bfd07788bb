"""From per-request records to the figures users ask for, as JSON and Markdown.

Conventions (stated once, so every report reads the same way):

* throughput = answered-with-200 requests / wall time (first send to last answer);
* offered load = requests sent / sending time (open loop); in closed loop it is what the
  workers managed, i.e. completed requests / wall time;
* latency percentiles are over the 200 answers (errors are counted, not timed), linear
  interpolation between order statistics (numpy's default);
* accuracy = predicted label == true label, over the 200 answers of a group;
* BitOps utilisation = X-BitOps-Used / X-BitOps-Budget of each answer; ``over_budget`` counts
  answers that spent more than the budget that applied (the contract says never).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.runner import Record, RunResult

PERCENTILES = (50, 90, 95, 99)


def latency_ms(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p95/p99/max/mean in milliseconds; ``None`` for an empty run."""
    if not latencies:
        return {f"p{p}": None for p in PERCENTILES} | {"max": None, "mean": None}
    ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    out: dict[str, float | None] = {
        f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True)
    }
    out["max"] = float(ms.max())
    out["mean"] = float(ms.mean())
    return out


def error_key(record: Record) -> str:
    """``429``, ``504``..., or ``transport:ReadTimeout`` when no response came."""
    return str(record.status) if record.status else f"transport:{record.error}"


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def bitops_summary(ok: Sequence[Record]) -> dict[str, Any]:
    used = [r.bitops for r in ok if r.bitops is not None]
    applied = [r.budget_applied for r in ok if r.budget_applied is not None]
    pairs = [(r.bitops, r.budget_applied) for r in ok if r.bitops and r.budget_applied]
    return {
        "mean_used": _mean(used),
        "mean_budget": _mean(applied),
        "mean_utilization": _mean(u / b for u, b in pairs),
        "max_utilization": max((u / b for u, b in pairs), default=None),
        "over_budget": sum(1 for u, b in pairs if u > b * (1 + 1e-9)),
    }


def group_summaries(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Accuracy, BitOps and latency per group (budget, and widths when pinned), ordered by the
    budget that applied so the table reads as accuracy against cost."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[record.group].append(record)
    rows = []
    for name, members in groups.items():
        ok = [r for r in members if r.status == 200]
        scored = [r for r in ok if r.predicted is not None]
        correct = sum(1 for r in scored if r.predicted == r.label)
        requested = [r.budget for r in members if r.budget is not None]
        rows.append(
            {
                "group": name,
                "widths": members[0].widths,
                "requests": len(members),
                "ok": len(ok),
                "errors": len(members) - len(ok),
                "correct": correct,
                "accuracy": correct / len(scored) if scored else None,
                "mean_budget_requested": _mean(requested),
                **bitops_summary(ok),
                "latency_ms": latency_ms([r.latency for r in ok]),
            }
        )
    rows.sort(key=lambda g: (g["mean_budget"] or g["mean_budget_requested"] or 0.0, g["group"]))
    return rows


def summarize_run(result: RunResult) -> dict[str, Any]:
    """The figures of one run (JSON-ready)."""
    records = result.records
    ok = [r for r in records if r.status == 200]
    scored = [r for r in ok if r.predicted is not None]
    wall = max(result.wall_seconds, 1e-9)
    if result.config.mode == "open":
        offered = len(records) / max(result.send_seconds, 1e-9)
    else:
        offered = len(records) / wall
    lag = latency_ms(result.schedule_lag) if result.schedule_lag else None
    return {
        "config": result.config_dict(),
        "started_at": result.started_at,
        "wall_seconds": result.wall_seconds,
        "sent": len(records),
        "ok": len(ok),
        "errors": dict(sorted(Counter(error_key(r) for r in records if r.status != 200).items())),
        "error_types": dict(
            sorted(
                Counter(r.error for r in records if r.status not in (0, 200) and r.error).items()
            )
        ),
        "offered_rps": offered,
        "throughput_rps": len(ok) / wall,
        "latency_ms": latency_ms([r.latency for r in ok]),
        "accuracy": sum(r.predicted == r.label for r in scored) / len(scored) if scored else None,
        "bitops": bitops_summary(ok),
        "policies": dict(sorted(Counter(r.policy for r in ok if r.policy).items())),
        "groups": group_summaries(records),
        "client_cpu_seconds": result.client_cpu_seconds,
        "client_cpu_percent": 100.0 * result.client_cpu_seconds / wall,
        "schedule_lag_ms": lag,
    }


def build_report(
    results: Sequence[RunResult],
    *,
    url: str,
    card: dict[str, Any],
    workload: dict[str, Any],
    machine: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """The whole report: every run, plus groups over all runs together."""
    every = [r for result in results for r in result.records]
    return {
        "tool": "loadtest",
        "command": command,
        "url": url,
        "model": {
            k: card.get(k) for k in ("name", "version", "min_bitops", "max_bitops", "device")
        },
        "workload": workload,
        "machine": machine or {},
        "runs": [summarize_run(result) for result in results],
        "groups_all_runs": group_summaries(every),
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _m(value: float | None) -> str:
    """BitOps in millions, the unit budgets are usually written in."""
    return "-" if value is None else f"{value / 1e6:.3f}M"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def runs_table(runs: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> list[str]:
    """One row per run; ``names`` adds a first column saying what each run was."""
    lines = [
        "| load | offered req/s | throughput req/s | p50 ms | p90 ms | p95 ms | p99 ms "
        "| max ms | errors | accuracy | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    if names is not None:
        lines = ["| server, requests " + lines[0], "|---" + lines[1]]
    for i, run in enumerate(runs):
        lat = run["latency_ms"]
        errors = ", ".join(f"{k}: {v}" for k, v in run["errors"].items()) or "none"
        first = f"| {names[i]} " if names is not None else ""
        lines.append(
            f"{first}| {run['config']['label']} | {run['offered_rps']:.1f} "
            f"| {run['throughput_rps']:.1f} "
            f"| {_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['p95'])} | {_f(lat['p99'])} "
            f"| {_f(lat['max'])} | {errors} | {_pct(run['accuracy'])} "
            f"| {run['client_cpu_percent']:.0f}% |"
        )
    return lines


def groups_table(groups: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| group | requests | ok | accuracy | mean budget | mean BitOps used | utilisation "
        "| over budget | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        lat = g["latency_ms"]
        lines.append(
            f"| {g['group']} | {g['requests']} | {g['ok']} | {_pct(g['accuracy'])} "
            f"| {_m(g['mean_budget'])} | {_m(g['mean_used'])} | {_pct(g['mean_utilization'])} "
            f"| {g['over_budget']} | {_f(lat['p50'])} | {_f(lat['p99'])} |"
        )
    return lines


def to_markdown(report: dict[str, Any], plot_name: str | None = None) -> str:
    """A readable page: runs, then accuracy and BitOps per group, then where it ran."""
    model = report["model"]
    work = report["workload"]
    lines = [
        f"# Load test: {model.get('name')} {model.get('version')} at {report['url']}",
        "",
    ]
    if report.get("command"):
        lines += ["Reproduce:", "", "```", report["command"], "```", ""]
    lines += [
        f"- budgets: `{work.get('budgets')}`; widths: `{work.get('widths')}`; "
        f"seed {work.get('seed')}; images: {work.get('images')}",
        f"- model BitOps range: {_m(model.get('min_bitops'))} to {_m(model.get('max_bitops'))}",
        "",
        "## Runs",
        "",
        *runs_table(report["runs"]),
        "",
        "Throughput counts 200 answers per second of wall time; latency is over 200 answers "
        "(open loop: from the scheduled send time). Client CPU is the generator's own share of "
        "one core: near 100% means the client, not the server, was the limit.",
        "",
        "## Accuracy and BitOps per budget (all runs)",
        "",
        *groups_table(report["groups_all_runs"]),
        "",
    ]
    if len(report["runs"]) > 1:
        for i, run in enumerate(report["runs"], 1):
            lines += [
                f"### Run {i}: {run['config']['label']}",
                "",
                *groups_table(run["groups"]),
                "",
            ]
    if plot_name:
        lines += [f"![latency, accuracy and BitOps]({plot_name})", ""]
    machine = report.get("machine") or {}
    if machine:
        lines += ["## Machine", ""]
        lines += [f"- {k}: {v}" for k, v in machine.items()]
        lines.append("")
    return "\n".join(lines)
