"""loadtest.flood: a tiny end-to-end run against a real server, the verdict, the CLI's errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from loadtest.flood import main, verdict

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")


def _round(idle_p99: float, flooded_p99: float) -> dict:
    return {"idle": {"p99_ms": idle_p99}, "flooded": {"p99_ms": flooded_p99}}


def test_the_verdict_is_on_the_median_p99_of_each_condition() -> None:
    v = verdict([_round(2.0, 3.0), _round(4.0, 30.0), _round(3.0, 5.0)])
    assert (v["idle_p99_ms"], v["flooded_p99_ms"]) == (3.0, 5.0)
    assert v["ratio"] == pytest.approx(5.0 / 3.0) and v["met"]
    assert not verdict([_round(2.0, 4.5)])["met"]


@needs_wrk
def test_a_tiny_flood_measures_both_conditions(
    tiny_model_dir: Path, tiny_fmnist_dir: Path, tmp_path: Path
) -> None:
    own_cpus = os.sched_getaffinity(0)
    first = str(min(own_cpus))
    code = main(
        [
            *("--model", str(tiny_model_dir), "--data-dir", str(tiny_fmnist_dir)),
            *("--rounds", "1", "--seconds", "1", "--connections", "30", "--ramp", "1"),
            *("--attacker-nice", "5", "--server-cpus", first, "--client-cpus", first),
            *("--out", str(tmp_path)),
        ]
    )
    assert code == 0
    assert os.sched_getaffinity(0) == own_cpus  # the caller's CPUs are given back
    report = json.loads((tmp_path / "flood.json").read_text())
    assert report["config"]["server_cpus"] == [int(first)]
    (only,) = report["rounds"]
    for condition in ("idle", "flooded"):
        assert only[condition]["throughput_rps"] > 0 and only[condition]["p99_ms"] > 0
        assert only[condition]["server_wait_ms_per_request"] >= 0
    assert only["slow_clients"]["opened"] >= 30
    assert "ratio **" in (tmp_path / "flood.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", "0"], "--rounds and --seconds"),
        (["--set", "nosuch"], "expected NAME=VALUE"),
        (["--server-cpus", "x"], "is not a CPU list"),
        (["--client-cpus", "4096"], "this machine allows CPUs"),
    ],
)
def test_a_command_line_mistake_is_one_line_and_exit_code_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
