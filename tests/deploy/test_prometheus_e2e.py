"""End to end: a real ``abn serve`` scraped by a real Prometheus answers every dashboard panel.

The tiny test model is served on a free port; Debian's ``prometheus`` runs with a copy of
deploy/prometheus/prometheus.yml whose targets point at it (1 s scrape interval, storage in a
temporary directory, the project's alert rules loaded). After one scrape of the idle server,
traffic goes in: classifications at random budgets (adaptive and pinned, concurrent so they
batch), feedback (correct and incorrect), and client errors. Then every PromQL expression of
every panel of the generated dashboards runs through Prometheus' HTTP API, as Grafana would
run it, until each returns a finite value. The server is scraped as two targets of the one job:
as compose's Prometheus sees it (no namespace or pod label) and as Kubernetes' does (those
labels added, as prometheus-kubernetes.yml and the ServiceMonitor add them). Every panel has
data with the dashboard's namespace and pod variables at "All" (``.*``, which takes in the
unlabelled target too), for the unlabelled target alone, and for the labelled pod chosen; none
with a pod that does not exist; the variables' own ``label_values`` queries list the labelled
pod. Both processes are started and stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.server import free_port
from tests.deploy.conftest import DEPLOY
from tests.service.helpers import ServerProcess, png

JOB = "abn-serve"
# What Grafana substitutes for its interval variables, sized for a 1 s scrape interval:
# windows long enough to span the traffic, short enough that the traffic dominates them.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "1s"}
# The dashboard's own variables at "All" (their allValue), as a fresh dashboard opens.
ALL_PODS = {"$namespace": ".*", "$pod": ".*"}
# The labels Kubernetes scraping gives the second target.
POD_LABELS = {"namespace": "abn", "pod": "abn-serve-0"}
POLL_SECONDS = 40.0


class Process:
    """Prometheus in the background with its output in a log file, stopped by its PID (``abn
    serve`` is the tests' :class:`ServerProcess`, which has the same three methods)."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.flush()
        return f"--- {self.name} log ---\n" + self.log_path.read_text(errors="replace")[-4000:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


Running = Process | ServerProcess


def wait_until(
    what: str, check: Callable[[], bool], processes: list[Running], timeout: float
) -> None:
    """Poll ``check()`` until it is true; fail with the processes' logs after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in processes:
            p.check_alive()
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} after {timeout}s\n" + "\n".join(p.log() for p in processes))


def scrape_config_for_test(abn_port: int, prometheus_port: int, rules: list[str]) -> dict:
    """deploy/prometheus/prometheus.yml with its targets rewritten and a 1 s scrape interval;
    relabelling, job names and rules stay as committed. The server is two targets of its job:
    one as compose scrapes it, one with the labels of a Kubernetes pod."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job.pop("static_configs", None)
        job["scrape_interval"] = "1s"
        if job["job_name"] == JOB:
            target = [f"127.0.0.1:{abn_port}"]
            job["static_configs"] = [{"targets": target}, {"targets": target, "labels": POD_LABELS}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    assert JOB in {job["job_name"] for job in config["scrape_configs"]}
    config["rule_files"] = rules
    return config


def variable_queries() -> list[tuple[str, str]]:
    """(label, series selector) of every ``label_values(selector, label)`` variable, with the
    variables it refers to at "All"."""
    out = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
                assert match, variable["query"]
                selector = match.group(1)
                for name, value in ALL_PODS.items():
                    selector = selector.replace(name, value)
                out.append((match.group(2), selector))
    return out


def panel_queries(scope: dict[str, str]) -> list[tuple[str, str, bool]]:
    """(panel title, PromQL with Grafana's variables substituted, instant?) of every target;
    ``scope``: the values of the namespace and pod variables."""
    out = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for inner in [panel, *panel.get("panels", [])]:
                for t in inner.get("targets", []):
                    expr = t["expr"]
                    for variable, value in {**GRAFANA_VARIABLES, **scope}.items():
                        expr = expr.replace(variable, value)
                    assert "$" not in expr, f"{inner['title']}: unsubstituted variable in {expr}"
                    out.append((inner["title"], expr, bool(t.get("instant"))))
    return out


@pytest.fixture
def stack(
    tiny_model_dir: Path, prometheus_binary: str, tmp_path: Path
) -> Iterator[tuple[str, str, list[Running]]]:
    """``abn serve`` and Prometheus, both running; yields their URLs; stops both by PID."""
    processes: list[Running] = []
    try:
        abn = ServerProcess(
            tiny_model_dir,
            tmp_path / "abn.log",
            device="cpu",
            workers=None,  # the server's default, as deployed
            max_queue_delay_seconds=0.02,  # let concurrent requests share batches
        )
        processes.append(abn)
        prometheus_port = free_port()
        rules = [str(p) for p in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))]
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config_for_test(abn.port, prometheus_port, rules)))
        processes.append(
            Process(
                "prometheus",
                [
                    prometheus_binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                tmp_path / "prometheus.log",
                {k: v for k, v in os.environ.items() if not k.startswith("ABN_")},
            )
        )
        yield abn.url, f"http://127.0.0.1:{prometheus_port}", processes
    finally:
        for process in processes:
            process.stop()


async def send_traffic(abn: str, seed: int) -> dict[str, int]:
    """Classifications (adaptive and pinned, concurrent so they batch), feedback on half of
    them (half right, half wrong) and client errors; returns the count of each status."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=abn, timeout=60.0) as client:
        card = (await client.get("/v1/model")).json()
        low, high = card["min_bitops"], card["max_bitops"]
        widths = card["bit_candidates"]

        async def classify(i: int) -> httpx.Response:
            headers = {"Content-Type": "image/png"}
            if i % 4 == 3:
                headers["X-Bit-Widths"] = str(max(widths))
            else:
                headers["X-BitOps-Budget"] = f"{rng.uniform(low, high):.6g}"
            return await client.post("/classify", content=png(seed * 100 + i), headers=headers)

        answers = []
        for wave in range(2):
            answers += await asyncio.gather(*(classify(wave * 12 + i) for i in range(12)))
        ok = [r.json() for r in answers if r.status_code == 200]
        assert len(ok) == len(answers), [r.text for r in answers if r.status_code != 200][:3]
        for i, answer in enumerate(ok[:12]):
            label = answer["label"] if i % 2 == 0 else (answer["label"] + 1) % 10
            r = await client.post("/feedback", json={"id": answer["id"], "label": label})
            assert r.status_code < 300, r.text
        png_type = {"Content-Type": "image/png"}
        errors = [
            await client.post("/classify", content=b"GIF89a-not-a-png", headers=png_type),
            await client.post("/classify", content=b"hi", headers={"Content-Type": "text/plain"}),
            await client.post(
                "/classify", content=png(1), headers={**png_type, "X-BitOps-Budget": "-1"}
            ),
            await client.post("/feedback", json={"id": "no-such-request", "label": 1}),
        ]
        for r in errors:
            counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
        assert all(400 <= r.status_code < 500 for r in errors), [r.status_code for r in errors]
    counts["200"] = len(ok)
    return counts


def finite(result: dict) -> bool:
    """Whether a query result of Prometheus' HTTP API holds at least one finite number."""
    data = result["data"]
    if data["resultType"] == "scalar":
        return math.isfinite(float(data["result"][1]))
    values = [
        float(v)
        for series in data["result"]
        for _, v in (series.get("values") or [series["value"]])
    ]
    return any(math.isfinite(v) for v in values)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_dashboard_panel_returns_data_from_a_real_prometheus(
    stack: tuple[str, str, list[Running]],
) -> None:
    abn, prom, processes = stack
    queries = panel_queries(ALL_PODS)
    assert len(queries) >= 20

    def ready() -> bool:
        return httpx.get(f"{abn}/readyz", timeout=2).status_code == 200

    def prometheus_ready() -> bool:
        return httpx.get(f"{prom}/-/ready", timeout=2).status_code == 200

    def query(expr: str) -> dict:
        r = httpx.post(f"{prom}/api/v1/query", data={"query": expr}, timeout=10)
        assert r.status_code == 200, f"{expr}: {r.text}"
        return r.json()

    def query_range(expr: str) -> dict:
        now = time.time()
        form = {"query": expr, "start": now - 20, "end": now, "step": 1}
        r = httpx.post(f"{prom}/api/v1/query_range", data=form, timeout=10)
        assert r.status_code == 200, f"{expr}: {r.text}"
        return r.json()

    def scraped_once() -> bool:
        return bool(query(f'up{{job="{JOB}"}} == 1')["data"]["result"])

    wait_until("abn serve not ready", ready, processes, 120)
    wait_until("prometheus not ready", prometheus_ready, processes, 30)
    # One scrape of the idle server first: rate() needs a sample from before the traffic.
    wait_until("abn serve never scraped", scraped_once, processes, 30)

    # Two rounds of traffic with a scrape between them: series with labels (a route, a status
    # code) appear at their first request, and rate() over them needs a sample before the
    # second round, as it has in any long-running deployment.
    assert asyncio.run(send_traffic(abn, seed=1))["200"] == 24
    wait_until(
        "first round of traffic never scraped",
        lambda: bool(
            query('abn_requests_total{route="/classify", status_code="415"}')["data"]["result"]
        ),
        processes,
        30,
    )
    assert asyncio.run(send_traffic(abn, seed=2))["200"] == 24

    missing: list[str] = []

    def every_panel_has_data(scoped: list[tuple[str, str, bool]]) -> bool:
        missing.clear()
        for title, expr, instant in scoped:
            if not finite(query(expr) if instant else query_range(expr)):
                missing.append(f"{title}: {expr}")
        return not missing

    # "All"; the unlabelled (compose) target alone (what `.*` adds to the labelled ones); the
    # labelled pod chosen, as on Kubernetes.
    chosen = {"$namespace": POD_LABELS["namespace"], "$pod": POD_LABELS["pod"]}
    for round_, scope in enumerate((ALL_PODS, {"$namespace": "", "$pod": ""}, chosen), start=3):
        if scope is not ALL_PODS:  # ratios over rate(...[30s]) are NaN once traffic is 30 s old
            assert asyncio.run(send_traffic(abn, seed=round_))["200"] == 24
        try:
            scoped = queries if scope is ALL_PODS else panel_queries(scope)
            wait_until(
                f"panels without data for {scope}",
                lambda scoped=scoped: every_panel_has_data(scoped),
                processes,
                POLL_SECONDS,
            )
        except TimeoutError as err:
            raise AssertionError(f"no data for {scope}:\n" + "\n".join(missing)) from err
    up_all = f'up{{job="{JOB}", namespace=~".*", pod=~".*"}}'
    assert float(query(f"count({up_all})")["data"]["result"][0]["value"][1]) == 2

    # The variables' own queries list what Kubernetes labelled (the unlabelled target adds
    # nothing: in compose the lists are empty and "All" stays).
    variables = variable_queries()
    assert {label for label, _ in variables} == {"namespace", "pod"}
    for label, selector in variables:
        r = httpx.get(
            f"{prom}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10
        )
        assert r.status_code == 200, (label, selector, r.text)
        assert r.json()["data"] == [POD_LABELS[label]], (label, selector, r.text)

    # Another pod chosen: every panel is empty (none shows the only replica's data).
    for title, expr, instant in panel_queries({"$namespace": ".*", "$pod": "no-such-pod"}):
        assert not finite(query(expr) if instant else query_range(expr)), (title, expr)

    # The project's alert rules, loaded by the real Prometheus, evaluate without error on the
    # real series, and none fires on this healthy traffic: ABNBudgetViolation, which fires at
    # once, proves the budgets held. (Rules with a `for` could be pending on a slow scrape.)
    groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        assert rule["health"] in ("ok", "unknown"), (rule["name"], rule.get("lastError"))
        assert rule["state"] != "firing", (rule["name"], rule["alerts"])
