"""Report arithmetic on hand-made records: percentiles, errors, accuracy and BitOps per group;
the soak verdict and the bench's choice of a comparable uniform configuration."""

from __future__ import annotations

import json

import pytest

from loadtest.bench import nearest_uniform
from loadtest.report import build_report, group_summaries, latency_ms, summarize_run, to_markdown
from loadtest.runner import LoadConfig, Record, RunResult
from loadtest.soak import memory_verdict


def rec(i: int, group: str, label: int, predicted: int | None, status: int = 200) -> Record:
    ok = status == 200
    return Record(
        index=i,
        group=group,
        budget=100.0 if group == "budget A" else 200.0,
        widths=None,
        label=label,
        start=i * 0.01,
        latency=(i + 1) / 1000.0,
        status=status,
        error=None if ok else ("queue_full" if status else "ConnectError"),
        predicted=predicted if ok else None,
        bitops=(90.0 if group == "budget A" else 150.0) if ok else None,
        budget_applied=(100.0 if group == "budget A" else 200.0) if ok else None,
        policy="adaptive" if ok else None,
    )


def records() -> list[Record]:
    # group A: 4 answered, 3 right; group B: 2 answered, 1 right, one 429, one transport error
    return [
        rec(0, "budget A", 1, 1),
        rec(1, "budget A", 2, 2),
        rec(2, "budget A", 3, 3),
        rec(3, "budget A", 4, 0),
        rec(4, "budget B", 5, 5),
        rec(5, "budget B", 6, 7),
        rec(6, "budget B", 7, None, status=429),
        rec(7, "budget B", 8, None, status=0),
    ]


def result() -> RunResult:
    config = LoadConfig("closed", concurrency=2, requests=8)
    return RunResult(config, records(), "2026-01-01T00:00:00+00:00", 2.0, 2.0, 0.5)


def test_percentiles_are_numpy_linear_in_ms() -> None:
    lat = latency_ms([i / 1000.0 for i in range(1, 101)])
    assert lat["p50"] == pytest.approx(50.5)
    assert lat["p99"] == pytest.approx(99.01)
    assert lat["max"] == pytest.approx(100.0)
    assert latency_ms([])["p50"] is None


def test_accuracy_and_bitops_per_group() -> None:
    groups = {g["group"]: g for g in group_summaries(records())}
    a, b = groups["budget A"], groups["budget B"]
    assert (a["requests"], a["ok"], a["correct"], a["accuracy"]) == (4, 4, 3, 0.75)
    assert (b["requests"], b["ok"], b["errors"], b["accuracy"]) == (4, 2, 2, 0.5)
    assert a["mean_used"] == 90.0 and a["mean_budget"] == 100.0
    assert a["mean_utilization"] == pytest.approx(0.9)
    assert b["mean_utilization"] == pytest.approx(0.75)
    assert a["over_budget"] == b["over_budget"] == 0
    assert [g["group"] for g in group_summaries(records())] == ["budget A", "budget B"]


def test_run_summary_counts_errors_by_status_and_rates() -> None:
    s = summarize_run(result())
    assert s["sent"] == 8 and s["ok"] == 6
    assert s["errors"] == {"429": 1, "transport:ConnectError": 1}
    assert s["throughput_rps"] == pytest.approx(3.0)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["client_cpu_percent"] == pytest.approx(25.0)


def test_over_budget_answers_are_counted() -> None:
    bad = rec(0, "budget A", 1, 1)
    bad.bitops = 101.0
    assert group_summaries([bad])[0]["over_budget"] == 1


def test_report_round_trips_through_json_and_renders() -> None:
    card = {"name": "m", "version": "1", "min_bitops": 50.0, "max_bitops": 300.0}
    report = build_report([result()], url="http://x", card=card, workload={"budgets": "A,B"})
    again = json.loads(json.dumps(report))
    assert again["runs"][0]["ok"] == 6
    text = to_markdown(again, "plot.png")
    assert "| budget A | 4 | 4 | 75.00% |" in text
    assert "429: 1" in text and "![" in text


def test_soak_verdict() -> None:
    minutes = list(range(31))
    flat = [300.0 + (0.3 if i % 2 else 0.0) for i in minutes]
    growing = [300.0 + 0.5 * i for i in minutes]  # 30 MiB/hour
    assert memory_verdict(minutes, flat)["verdict"] == "flat"
    verdict = memory_verdict(minutes, growing)
    assert verdict["verdict"] == "growing"
    assert verdict["slope_mib_per_hour"] == pytest.approx(30.0)
    assert memory_verdict([0, 1], [1.0, 2.0])["verdict"] == "inconclusive"
    # a warm-up climb followed by a plateau is flat: the first 20% is left out of the fit
    warm = [250.0 + 10 * i if i < 5 else 300.0 for i in minutes]
    assert memory_verdict(minutes, warm)["verdict"] == "flat"


def test_nearest_uniform_configuration() -> None:
    card = {
        "layers": [{"macs": 100}, {"macs": 300}],
        "bit_candidates": [2, 4, 8],
        "fixed_bitops": 1000.0,
        "min_bitops": 1000.0 + 400 * 4,
    }
    # costs: 2 -> 2600, 4 -> 7400, 8 -> 26600
    assert nearest_uniform(card, 7000.0) == (4, 7400.0)
    assert nearest_uniform(card, 20000.0) == (8, 26600.0)
