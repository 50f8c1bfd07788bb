"""loadtest.bench_figures on hand-made runs: means over rounds, saturation, ratios, verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.bench_figures import TARGETS, figures, mean_runs, ratio, saturation


def run(server: str, load: str, conc: int, rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {
        "server": server,
        "load": load,
        "connections": conc,
        "throughput_rps": rps,
        "latency_ms": {"p50": p50, "p99": p99},
        "server_cpu_ms_per_request": 1.0,
        "server_cores": 1.0,
        "client_cpu_ms_per_request": 0.01,
    }


RUNS = [
    run("service", "pinned", 1, 600, 1.5, 2.0),
    run("service", "pinned", 32, 2000, 10.0, 20.0),
    run("service", "pinned", 32, 2200, 12.0, 24.0),  # a second round
    run("service", "adaptive", 32, 1900, 11.0, 22.0),
    run("service", "pinned-nearest", 32, 2000, 10.0, 20.0),
    run("litserve", "pinned", 1, 150, 6.0, 8.0),
    run("litserve", "pinned", 32, 800, 27.0, 60.0),
    run("naive", "pinned", 1, 700, 1.25, 2.0),
    run("lean", "pinned", 32, 3000, 8.0, 12.0),
    run("lean", "pinned", 128, 3500, 30.0, 40.0),
]


def test_rounds_are_averaged_per_server_load_and_concurrency() -> None:
    means = mean_runs(RUNS)
    row = means[("service", "pinned", 32)]
    assert row["rounds"] == 2
    assert row["throughput_rps"] == pytest.approx(2100)
    assert row["p99_ms"] == pytest.approx(22.0)
    assert saturation(means, "service") == pytest.approx(2100)  # pinned runs only
    assert saturation(means, "lean") == pytest.approx(3500)
    assert saturation(means, "bentoml") is None


def test_every_target_figure_is_the_ratio_the_issue_defines() -> None:
    f = figures(mean_runs(RUNS), {"service": 400.0, "litserve": 1000.0})
    assert f["c1_p50_vs_naive"] == pytest.approx(1.5 / 1.25)
    assert f["saturation_vs_litserve"] == pytest.approx(2100 / 800)
    assert f["saturation_vs_lean"] == pytest.approx(2100 / 3500)
    assert f["c32_p99_vs_litserve"] == pytest.approx(22.0 / 60.0)
    assert f["adaptive_overhead"] == pytest.approx(1 - 1900 / 2000)
    assert f["memory_vs_litserve"] == pytest.approx(0.4)
    verdicts = {k: TARGETS[k].verdict(v) for k, v in f.items()}
    assert verdicts["saturation_vs_litserve"] == "met"
    assert verdicts["saturation_vs_lean"] == "**MISSED**"
    assert verdicts["c1_p50_vs_naive"] == "met"  # 1.2 exactly is within "<= 1.2"


def test_a_server_not_measured_leaves_its_figures_empty() -> None:
    service_only = [r for r in RUNS if r["server"] == "service"]
    f = figures(mean_runs(service_only), {"service": 400.0})
    assert f["saturation_vs_litserve"] is None and f["memory_vs_litserve"] is None
    assert f["c1_p50_vs_naive"] is None
    assert f["adaptive_overhead"] is not None
    assert TARGETS["saturation_vs_lean"].verdict(None) == "not measured"
    assert ratio(1.0, 0.0) is None and ratio(None, 2.0) is None
