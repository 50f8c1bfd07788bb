"""What a real ``abn serve`` writes for tools: /metrics through ``promtool check metrics``, and
its log lines as JSON (``ABN_LOG_FORMAT=json``).

One server (the tiny test model, a free port, started and stopped by PID) takes a few requests
of every kind, so that every metric family has samples, then is scraped and stopped. With the
deprecated names dropped (``ABN_DEPRECATED_METRICS=false``) promtool must exit 0 and say
nothing; with the defaults, which keep them one release (the contract lists
``abn_layer_bits_total``: docs/api.md), its one complaint is that name. Both also with two
workers, whose /metrics is prometheus_client's multiprocess exposition
(service/multiprocess_metrics.py).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import run
from tests.service.helpers import ServerProcess, png

pytestmark = pytest.mark.timeout(300)  # may build the shared tiny model first


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The server's /metrics after traffic, its log, and the responses it gave."""
    log = tmp_path_factory.mktemp("server-output") / "server.log"
    server = ServerProcess(
        tiny_model_dir, log, deprecated_metrics="false", log_format="json", log_level="info"
    )
    try:
        server.wait_ready()
        png_headers = {"Content-Type": "image/png"}
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            card = c.get("/v1/model").json()
            budgets = [card["max_bitops"], (card["min_bitops"] + card["max_bitops"]) / 2]
            responses = [
                c.post(
                    "/classify",
                    content=png(i),
                    headers={**png_headers, "X-BitOps-Budget": repr(float(b))},
                )
                for i, b in enumerate(budgets)
            ]
            responses.append(c.post("/classify", content=png(9), headers=png_headers))
            responses.append(c.post("/classify", content=b"junk", headers=png_headers))
            first = responses[0].json()
            responses.append(c.post("/feedback", json={"id": first["id"], "label": 1}))
            responses.append(c.get("/v1/model"))
            metrics = c.get("/metrics")
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 200, 200], server.log()
    yield {"metrics": metrics, "log": log.read_text(), "responses": responses}


# promtool reads `bits` in the name as a unit (docs/api.md, Deprecated metric names).
DEPRECATED_COMPLAINT = 'abn_layer_bits_total use base unit "bytes" instead of "bits"'


def promtool_check(promtool: str, text: str) -> subprocess.CompletedProcess:
    return run([promtool, "check", "metrics"], input=text)


def test_promtool_accepts_a_real_servers_metrics(promtool: str, served: dict) -> None:
    text = served["metrics"].text
    assert "abn_layer_width_selections_total{" in text
    assert "_created" not in text
    for family in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert f"\n{family}" in text, family
    result = promtool_check(promtool, text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("workers", [1, 2])
def test_with_the_defaults_promtool_flags_only_the_deprecated_name(
    promtool: str, tiny_model_dir: Path, tmp_path: Path, workers: int
) -> None:
    """promtool's whole verdict on a served /metrics after a classification and its feedback,
    with the defaults: the deprecated name (exit status 3, lint problems only) and nothing
    else."""
    server = ServerProcess(tiny_model_dir, tmp_path / "server.log", workers=workers)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            answer = c.post("/classify", content=png(1), headers={"Content-Type": "image/png"})
            assert answer.status_code == 200, answer.text
            c.post("/feedback", json={"id": answer.json()["id"], "label": 1})
            text = c.get("/metrics").text
    finally:
        assert server.stop() == 0, server.log()
    assert "abn_layer_width_selections_total{" in text and "_created" not in text
    assert "\nprocess_cpu_seconds_total" in text and "\npython_info" in text
    result = promtool_check(promtool, text)
    said = [line for line in (result.stdout + result.stderr).splitlines() if line]
    assert (result.returncode, said) == (3, [DEPRECATED_COMPLAINT])


def test_json_log_lines_parse_and_carry_the_request_ids(served: dict) -> None:
    lines = [json.loads(line) for line in served["log"].splitlines() if line.strip()]
    assert lines, "no log lines"
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # one format for all
    access = {line["request_id"]: line for line in lines if line["logger"] == "service.access"}
    for response in served["responses"]:
        line = access[response.headers["x-request-id"]]
        assert line["status"] == response.status_code
    classified = served["responses"][0]
    line = access[classified.headers["x-request-id"]]
    assert line["route"] == "/classify"
    assert line["bitops"] == classified.json()["bitops"]
    assert line["budget"] == classified.json()["budget"]
