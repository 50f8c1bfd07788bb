"""loadtest.handoff: both servers up with the same settings but the mode, every round measures
each (the order alternating), ratios within a round and their median; the servers and wrk
replaced by fakes (the real run is the measurement in docs/operations.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest import handoff
from loadtest.workload import Images

# what the per-worker server measures; the shared one these times a factor of its round
PER_WORKER = {"c1_p50_ms": 2.0, "c1_p99_ms": 4.0, "c32_rps": 400.0, "c32_p50_ms": 80.0}
SHARED_FACTOR = [1.5, 1.1, 1.3]  # round 1, 2, 3


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"started": [], "warmed": [], "measured": []}

    @contextlib.contextmanager
    def server(model: Path, log: Path, **settings: Any) -> Iterator[str]:
        seen["started"].append(settings)
        yield settings["model_process"]

    def measure(mode: str, listing: Path, seconds: float) -> dict[str, float]:
        factor = 1.0 if mode == "per-worker" else SHARED_FACTOR[len(seen["measured"]) // 2]
        seen["measured"].append(mode)
        return {k: v * factor for k, v in PER_WORKER.items()}

    pixels = np.zeros((256, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(handoff, "ManagedServer", server)
    monkeypatch.setattr(handoff, "warm", lambda mode, listing: seen["warmed"].append(mode))
    monkeypatch.setattr(handoff, "measure", measure)
    monkeypatch.setattr(
        handoff.Images,
        "fashion_mnist",
        classmethod(lambda cls, limit: Images(pixels, pixels[:, 0, 0])),
    )
    return seen


def test_rounds_alternate_the_modes_and_report_ratios_within_each(
    calls: dict[str, list[Any]], tmp_path: Path
) -> None:
    report = handoff.run_rounds(Path("model"), 3, 1.0, 4, 1, tmp_path)
    assert calls["started"] == [
        {"workers": 2, "model_process": mode, "torch_threads": 1} for mode in handoff.MODES
    ]
    assert sorted(calls["warmed"]) == sorted(handoff.MODES)
    order = ["per-worker", "shared", "shared", "per-worker", "per-worker", "shared"]
    assert calls["measured"] == order
    ratios = [row["ratio"]["c32_rps"] for row in report["rounds"]]
    assert ratios == pytest.approx(SHARED_FACTOR)
    assert report["median_ratio"]["c1_p50_ms"] == pytest.approx(1.3)
    text = handoff.table(report)
    assert "| median | shared / per-worker | 1.3 | 1.3 | 1.3 | 1.3 |" in text
