"""``make bench`` end to end on the tiny model with runs of a second: it starts the service and
the naive peer, drives them with wrk, writes the page and the raw JSON, and fills in every
figure those servers give. What the figures are is measured by ``make bench`` itself, never
asserted here. The lean peer is tested in process (test_peers.py: it takes a while to start one
process per core); LitServe's runs only where its environment exists (``make bench`` makes it)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from loadtest.bench import main
from loadtest.peers.registry import PEERS, PeerServer
from loadtest.peers.venv import missing_modules, python_of
from loadtest.wrk import run_wrk, write_request_set

ROOT = Path(__file__).resolve().parents[2]
PEERS_PYTHON = python_of(ROOT / ".venv-peers")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")


@needs_wrk
def test_a_tiny_bench_measures_the_service_and_a_peer(
    tiny_model_dir: Path, tiny_fmnist_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "benchmarks.md"
    code = main(
        [
            *("--model", str(tiny_model_dir), "--data-dir", str(tiny_fmnist_dir)),
            *("--out", str(out), "--work-dir", str(tmp_path / "work")),
            *("--peers", "naive", "--peers-venv", sys.prefix),  # no install: this venv
            *("--rounds", "1", "--run-seconds", "1", "--warmup-seconds", "1"),
            *("--concurrencies", "1,4", "--requests", "20", "--generator-concurrency", "2"),
        ]
    )
    assert code == 0
    raw = json.loads((tmp_path / "benchmarks" / "bench.json").read_text())["results"]
    f = raw["figures"]
    for key in ("c1_p50_vs_naive", "adaptive_overhead"):
        assert f[key] is not None and f[key] == f[key], key
    assert f["saturation_vs_litserve"] is None and f["saturation_vs_lean"] is None
    loads = {(r["server"], r["load"], r["connections"]) for r in raw["runs"]}
    assert loads == {
        *((s, "pinned", c) for s in ("service", "naive") for c in (1, 4)),
        ("service", "adaptive", 32),
        ("service", "pinned-nearest", 32),
    }
    for run in raw["runs"]:
        assert run["ok"] > 0 and run["errors"]["status"] == 0, run
        assert run["server_cpu_ms_per_request"] > 0 and run["client_cpu_ms_per_request"] > 0
    assert set(raw["peak_rss_mib"]) == {"service", "naive"}
    page = out.read_text()
    assert "| figure | measured | target | verdict |" in page
    assert PEERS["naive"].title in page
    assert f"service's switchable layers on its `{raw['model']['backend']}` backend" in page
    assert "not measured" in page  # the LitServe and lean figures, in this run
    assert (tmp_path / "benchmarks" / "accuracy.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "naive,bentoml"], "choose from litserve, naive, lean"),
        (["--concurrencies", "1,0"], "--concurrencies"),
        (["--bits", "7"], "--bits 7"),
        (["--rounds", "0"], "--rounds must be positive"),
    ],
)
def test_a_command_line_mistake_is_one_line_and_exit_code_2(
    tiny_model_dir: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--model", str(tiny_model_dir), *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


@needs_wrk
@pytest.mark.skipif(
    bool(missing_modules(PEERS_PYTHON, ["litserve"])),
    reason=f"LitServe's environment {PEERS_PYTHON.parent.parent} is absent (make bench makes it)",
)
def test_the_litserve_peer_answers_wrk(tiny_model_dir: Path, tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("L", (28, 28), color=128).save(png, format="PNG")
    body = json.dumps({"image": base64.b64encode(png.getvalue()).decode()}).encode()
    listing = write_request_set(tmp_path / "set", [(body, {"Content-Type": "application/json"})])
    server = PeerServer(
        PEERS["litserve"],
        PEERS_PYTHON,
        tiny_model_dir,
        tmp_path / "litserve.log",
        bits=4,
        torch_threads=1,
        workers=1,
    )
    with server:
        result = run_wrk(server.url + "/classify", listing, connections=2, seconds=1)
    assert result.ok > 0 and result.errors["status"] == 0, server.log_tail()
