"""The bit-serial benchmark: its fit, its page (targets judged, plot written) and its timings
on the tiny model, with both backends."""

from __future__ import annotations

import json

import pytest
import torch

from abn.bitserial.cpu import missing_flags
from loadtest.bitserial import COMPARED_BACKENDS, parse_args
from loadtest.bitserial_offline import (
    AdaptivePoint,
    adaptive_latency,
    fit_line,
    layer_profile,
    uniform_latency,
)
from loadtest.bitserial_page import write_page
from service.model import ServedModel

AVX512 = not missing_flags("avx512")


def test_the_fit_recovers_a_line_and_its_proportional_share() -> None:
    points = [AdaptivePoint("b", 0.0, x * 1e8, 0.2 + 3.0 * x / 10, 0.0) for x in range(1, 6)]
    fit = fit_line(points)
    assert fit.intercept_ms == pytest.approx(0.2)
    assert fit.slope_ms_per_gbitop == pytest.approx(3.0)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.share_proportional(1e8) == pytest.approx(0.3 / 0.5)


def synthetic(two_over_eight: float) -> dict:
    uniform = []
    for backend in COMPARED_BACKENDS:
        for bits in (1, 2, 8):
            for batch in (1, 32):
                ms = 1.0 if backend == "float" else {1: 0.1, 2: two_over_eight, 8: 1.0}[bits]
                uniform.append(
                    {
                        "backend": backend,
                        "bits": bits,
                        "batch": batch,
                        "wall_ms": ms,
                        "cpu_ms": ms,
                        "bitops": bits * bits * 1e7,
                    }
                )
    adaptive = [
        {"backend": b, "budget": x * 1e7, "mean_bitops": x * 1e7, "wall_ms": x, "cpu_ms": x}
        for b in COMPARED_BACKENDS
        for x in (1, 2, 3)
    ]
    fit = {
        "intercept_ms": 0.1,
        "slope_ms_per_gbitop": 1.0,
        "r_squared": 1.0,
        "bitops_low": 1e7,
        "bitops_high": 6.4e8,
        "share_at_low": 0.5,
        "share_at_high": 0.9,
    }
    machine = {"date": "d", "cpu": "c", "cores": 2, "torch": "t", "load_average": "0 0 0"}
    return {
        "offline": {
            "uniform": uniform,
            "adaptive": adaptive,
            "fits": {
                f"{kind} {b} {c}": fit
                for kind in ("adaptive", "uniform")
                for b in COMPARED_BACKENDS
                for c in ("wall", "cpu")
            },
            "min_bitops": 1e7,
            "max_bitops": 6.4e8,
            "profile": {"1": {"layer": 0.1, "rest": 0.1}},
        },
        "machine": {"start": machine, "end": machine},
        "command": "python -m loadtest.bitserial",
    }


@pytest.mark.parametrize(("ratio", "verdict"), [(0.2, "| met |"), (0.5, "**MISSED**")])
def test_the_page_judges_the_ratio_target(tmp_path, ratio, verdict) -> None:
    page = write_page(tmp_path, synthetic(ratio)).read_text()
    line = next(x for x in page.splitlines() if x.startswith("| all-2 / all-8"))
    assert verdict in line
    assert (tmp_path / "bitserial" / "latency_vs_bitops.png").stat().st_size > 0
    assert json.loads((tmp_path / "bitserial" / "bench.json").read_text())["command"]


@pytest.mark.parametrize(("cheap_p50", "verdict"), [(10.0, "| met |"), (15.0, "**MISSED**")])
def test_the_page_judges_the_served_p50_ratio(tmp_path, cheap_p50, verdict) -> None:
    results = synthetic(0.2)
    results["served"] = [
        {
            "backend": "bitserial",
            "load": load,
            "round": 1,
            "connections": 64,
            "throughput_rps": 100.0,
            "latency_ms": {"p50": p50, "p99": 2 * p50},
            "errors": {},
        }
        for load, p50 in (("cheapest", cheap_p50), ("dearest", 20.0))
    ]
    page = write_page(tmp_path, results).read_text()
    line = next(x for x in page.splitlines() if x.startswith("| served p50"))
    assert verdict in line and "(" in line


def test_a_cli_mistake_is_one_line_and_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--adaptive-budgets", "1"])
    assert exit_.value.code == 2
    assert "a line needs two points" in capsys.readouterr().err


@pytest.mark.skipif(not AVX512, reason="this CPU cannot run the avx512 kernel")
def test_timings_cover_every_cell_on_the_tiny_model(tiny_model_dir) -> None:
    models = {b: ServedModel.load(tiny_model_dir, "cpu", b) for b in COMPARED_BACKENDS}
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    uniform = uniform_latency(models, images, repeats=1)
    assert len(uniform) == 2 * len(models["float"].bit_candidates) * 2
    assert all(v["wall_ms"] > 0 and v["cpu_ms"] >= 0 for v in uniform.values())
    low, high = models["float"].min_bitops, models["float"].max_bitops
    points = adaptive_latency(models, images, [low, high], repeats=1)
    assert {p.backend for p in points} == set(COMPARED_BACKENDS)
    assert all(low <= p.mean_bitops <= 2 * high for p in points)
    profile = layer_profile(models["bitserial"], images[:32], (1, 8), repeats=1)
    assert set(profile[1]) == {*models["bitserial"].layer_names, "rest"}
