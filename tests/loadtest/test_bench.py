"""``make bench`` end to end on the tiny model, with runs of a fraction of a second: it starts
its servers, writes the page and the raw JSON, and every figure it reports is filled in. What the
figures are is measured by ``make bench`` itself, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.bench import TARGETS, main


def test_a_tiny_bench_writes_every_figure(
    tiny_model_dir: Path, tiny_fmnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "benchmarks.md"
    code = main(
        [
            "--model",
            str(tiny_model_dir),
            "--data-dir",
            str(tiny_fmnist_dir),
            "--out",
            str(out),
            "--run-seconds",
            "0.6",
            "--concurrencies",
            "4,32",
            "--large-batch",
            "64",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    page = out.read_text()
    raw = json.loads((tmp_path / "benchmarks" / "bench.json").read_text())["results"]
    for key in TARGETS:
        assert raw["figures"][key] is not None and raw["figures"][key] == raw["figures"][key], key
    cpu = raw["server_cpu_ms_per_request"]
    assert set(cpu) >= {
        "batching on, adaptive, concurrency 32",
        "batching off, adaptive, concurrency 32",
        "batching on, adaptive, half load",
    }
    assert all(v is not None and v["total"] > 0 for v in cpu.values()), cpu
    assert "| figure | measured | target | verdict |" in page
    assert "Server CPU per answered request, by thread" in page
    assert (tmp_path / "benchmarks" / "latency.png").stat().st_size > 0
