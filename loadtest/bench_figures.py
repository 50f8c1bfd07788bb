"""From the bench's wrk runs to its figures: means over rounds, ratios to the service, targets.

Pure arithmetic on plain dictionaries (the runs as ``loadtest.bench`` records them), so it is
tested on hand-made runs and the page can be rebuilt from ``bench.json`` alone.

Each run is one wrk run: ``server`` (``service`` or a peer's name), ``load`` (what was
sent: ``pinned`` at the bench's width, ``adaptive`` under the budget mix, ``pinned-nearest``),
``connections``, ``round``, and what it measured (``throughput_rps``, ``latency_ms`` p50/p99,
``server_cpu_ms_per_request``, ``server_cores``, ``client_cpu_ms_per_request``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import fmean
from typing import Any

SERVICE = "service"
CONCURRENCY_ADAPTIVE = 32  # where the adaptive and the pinned-nearest runs are compared
PINNED = "pinned"
ADAPTIVE = "adaptive"
PINNED_NEAREST = "pinned-nearest"
MEASURES = (
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms_per_request",
    "server_cores",
    "client_cpu_ms_per_request",
)


@dataclass(frozen=True)
class Target:
    name: str  # what the page calls the figure
    op: str  # ">=" or "<="
    value: float

    def verdict(self, measured: float | None) -> str:
        if measured is None:
            return "not measured"
        ok = measured >= self.value if self.op == ">=" else measured <= self.value
        return "met" if ok else "**MISSED**"


TARGETS: dict[str, Target] = {
    "c1_p50_vs_naive": Target("p50 at concurrency 1 / naive FastAPI's", "<=", 1.2),
    "saturation_vs_litserve": Target("saturation throughput / LitServe's", ">=", 2.5),
    "saturation_vs_lean": Target("saturation throughput / the lean floor's", ">=", 0.7),
    "c32_p99_vs_litserve": Target("p99 at concurrency 32 / LitServe's", "<=", 0.5),
    "adaptive_overhead": Target(  # the share of the pinned throughput that adaptive loses
        "adaptive throughput lost against pinned of the same mean BitOps", "<=", 0.10
    ),
    "memory_vs_litserve": Target("peak memory (all processes) / LitServe's", "<=", 0.8),
}


def _value(run: dict[str, Any], measure: str) -> float | None:
    if measure in ("p50_ms", "p99_ms"):
        return run["latency_ms"].get(measure.removesuffix("_ms"))
    return run.get(measure)


def mean_runs(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Each (server, load, connections): the mean over rounds of every measure, and how
    many rounds there were."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["server"], run["load"], int(run["connections"]))].append(run)
    out = {}
    for key, members in groups.items():
        row: dict[str, Any] = {"rounds": len(members)}
        for measure in MEASURES:
            values = [v for v in (_value(m, measure) for m in members) if v is not None]
            row[measure] = fmean(values) if values else None
        out[key] = row
    return out


def saturation(means: dict[tuple[str, str, int], dict[str, Any]], server: str) -> float | None:
    """The best mean throughput of ``server``'s pinned runs over every concurrency."""
    values = [
        m["throughput_rps"]
        for (s, load, _), m in means.items()
        if s == server and load == PINNED and m["throughput_rps"] is not None
    ]
    return max(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def figures(
    means: dict[tuple[str, str, int], dict[str, Any]], peak_rss_mib: dict[str, float | None]
) -> dict[str, float | None]:
    """The targets' figures (see :data:`TARGETS`); ``None`` where a server was not measured."""

    def at(server: str, connections: int, measure: str, load: str = PINNED) -> float | None:
        row = means.get((server, load, connections))
        return None if row is None else row[measure]

    adaptive = at(SERVICE, CONCURRENCY_ADAPTIVE, "throughput_rps", ADAPTIVE)
    pinned = at(SERVICE, CONCURRENCY_ADAPTIVE, "throughput_rps", PINNED_NEAREST)
    sat = saturation(means, SERVICE)
    return {
        "c1_p50_vs_naive": ratio(at(SERVICE, 1, "p50_ms"), at("naive", 1, "p50_ms")),
        "saturation_vs_litserve": ratio(sat, saturation(means, "litserve")),
        "saturation_vs_lean": ratio(sat, saturation(means, "lean")),
        "c32_p99_vs_litserve": ratio(at(SERVICE, 32, "p99_ms"), at("litserve", 32, "p99_ms")),
        "adaptive_overhead": None if adaptive is None or not pinned else 1 - adaptive / pinned,
        "memory_vs_litserve": ratio(peak_rss_mib.get(SERVICE), peak_rss_mib.get("litserve")),
    }
