"""The committed deployment files pass their own tools, and agree with each other.

hadolint (Dockerfile), docker-compose 1.29 (compose.yaml), promtool (Prometheus config, alert
rules and their unit tests), and the dashboard JSON equal to what its generator writes
(Kubernetes: test_kubernetes.py). Plus the cross-file contracts no single tool sees: every
``abn_*`` metric a dashboard or rule queries is one the service exposes, and the job name the
dashboards select on is the one scraped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from service.settings import OTHER_ABN_VARIABLES, Settings
from tests.deploy.conftest import DEPLOY, ROOT, run

# The metric families of the contract (shared/CONTRACT.md); histograms add _bucket/_sum/_count.
HISTOGRAMS = {
    "abn_request_duration_seconds",
    "abn_queue_duration_seconds",
    "abn_inference_duration_seconds",
    "abn_batch_size",
    "abn_bitops_budget",
    "abn_bitops_used",
    "abn_budget_utilization_ratio",
    "abn_prediction_confidence",
    "abn_expected_accuracy",
}
OTHERS = {
    "abn_requests_total",
    "abn_pending_requests",
    "abn_layer_bits_total",  # deprecated: dashboards and alerts must not query it
    "abn_layer_width_selections_total",
    "abn_feedback_total",
    "abn_model_info",
}
EXPOSED = OTHERS | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}


def load_generator() -> ModuleType:
    """deploy/grafana/generate_dashboards.py, imported from its path (it is a script)."""
    path = DEPLOY / "grafana" / "generate_dashboards.py"
    spec = importlib.util.spec_from_file_location("generate_dashboards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def dashboards() -> list[dict]:
    """Every committed dashboard, parsed."""
    paths = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    return [json.loads(path.read_text()) for path in paths]


def dashboard_panels() -> list[dict]:
    """Every panel of every committed dashboard, the panels of collapsed rows included."""
    return [
        inner
        for board in dashboards()
        for panel in board["panels"]
        for inner in [panel, *panel.get("panels", [])]
    ]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every committed dashboard."""
    return [(p["title"], t["expr"]) for p in dashboard_panels() for t in p.get("targets", [])]


def rule_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend((r.get("alert") or r["record"], r["expr"]) for r in group["rules"])
    return out


# -- Dockerfile ------------------------------------------------------------------------------
def test_hadolint_passes_and_every_ignore_is_justified(hadolint: str) -> None:
    result = run([hadolint, "--no-color", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].lstrip().startswith("#") and len(lines[i - 1]) > 20, (
                f"Dockerfile:{i + 1}: an ignored hadolint rule needs a comment saying why"
            )


def test_dockerfile_installs_like_make_serve() -> None:
    """The image installs with the constraints file, as `make serve` does, and serves the
    shipped model as a non-root user, with a /readyz health check."""
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("--constraint constraints.txt") >= 2
    assert "--constraint constraints.txt" in (ROOT / "Makefile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/readyz", text, re.M)
    assert 'ENTRYPOINT ["abn", "serve"]' in text
    assert "ARG MODEL_DIR=model_store/fmnist-abn" in text
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!model_store/" in ignore and "!constraints.txt" in ignore


# -- compose ---------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config_accepts_compose_yaml(
    docker_compose: str, profile: str | None, tmp_path: Path
) -> None:
    args = [docker_compose, "--project-directory", ROOT, "-f", ROOT / "compose.yaml"]
    no_env = tmp_path / "empty.env"
    no_env.write_text("")
    args += ["--env-file", no_env]  # not a developer's own .env
    if profile:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "ABN_"))}
    refused = run([*args, "config"], env=env)  # no Grafana password: no admin/admin either
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr
    result = run([*args, "config"], env={**env, "GRAFANA_ADMIN_PASSWORD": "secret"})
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    for name, service in services.items():  # published on this machine only, by default
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "secret"
    assert not any("lifecycle" in arg for arg in services["prometheus"]["command"])
    assert services["abn"]["environment"]["ABN_HOST"] == "0.0.0.0"  # inside the container
    assert {"abn", "abn-gpu", "prometheus", "grafana"} <= set(services)
    devices = services["abn-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["abn-gpu"]["profiles"] == ["gpu"]
    assert "profiles" not in services["abn"]
    mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning" in mounts and "deploy/grafana/dashboards" in mounts
    for name in ("abn", "abn-gpu"):  # the model from the host's model store, read-only
        assert services[name]["volumes"] == [f"{ROOT / 'model_store'}:/models:ro"]
        model_dir = services[name]["environment"]["ABN_MODEL_DIR"]
        assert model_dir == "/models/fmnist-abn"
        assert (ROOT / "model_store" / Path(model_dir).name / "manifest.json").is_file()


# -- Prometheus ------------------------------------------------------------------------------
def test_promtool_check_config(promtool: str) -> None:
    result = run([promtool, "check", "config", DEPLOY / "prometheus" / "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_config_kubernetes(promtool: str, tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes service discovery, so the check runs on a
    copy whose `kubernetes_sd_configs` become a static target; everything else (relabelling,
    rule files) is checked as written."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text())
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["pod.example:8000"]}]
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    copy = tmp_path / "prometheus-kubernetes.yml"
    copy.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", copy])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    files = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert files
    result = run([promtool, "check", "rules", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_and_every_alert_is_tested(promtool: str) -> None:
    tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
    assert tests
    result = run([promtool, "test", "rules", *tests])
    assert result.returncode == 0, result.stdout + result.stderr
    tested: dict[str, set[str]] = {}
    for path in tests:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                kind = "fires" if check.get("exp_alerts") else "silent"
                tested.setdefault(check["alertname"], set()).add(kind)
    for alert, _ in rule_exprs():
        assert tested.get(alert) == {"fires", "silent"}, (
            f"{alert}: needs a firing and a silent case"
        )


def test_alerts_named_in_the_issue_exist() -> None:
    exprs = dict(rule_exprs())
    assert 'le="+Inf"' in exprs["ABNBudgetViolation"]  # budget violations above 0
    assert "5.." in exprs["ABNHighErrorRatio"]
    assert "histogram_quantile(0.99" in exprs["ABNHighLatencyP99"]
    assert '"429"' in exprs["ABNRequestsShed"]
    assert "abn_pending_requests" in exprs["ABNQueueSaturated"]
    assert "abn_expected_accuracy" in exprs["ABNLiveAccuracyBelowExpected"]
    assert "up{" in exprs["ABNTargetDown"]


# -- dashboards ------------------------------------------------------------------------------
def test_committed_dashboards_equal_the_generated_ones() -> None:
    generated = load_generator().generate()
    committed = {p.name: p.read_text() for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert set(committed) == set(generated)
    for name, text in generated.items():
        assert committed[name] == text, (
            f"deploy/grafana/dashboards/{name} is stale: run "
            ".venv/bin/python deploy/grafana/generate_dashboards.py"
        )


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = " | ".join(title.lower() for title, _ in dashboard_queries())
    for words in [
        "request rate by status code",
        "p50 / p95 / p99",
        "queue time",
        "batch size",
        "pending requests",
        "used vs budget",
        "budget utilization (distribution)",
        "share of each bit-width per layer",
        "expected accuracy",
        "live accuracy from feedback",
        "prediction confidence",
        "model info",
    ]:
        assert words in titles, words


def test_every_queried_metric_is_exposed_and_the_job_is_scraped() -> None:
    queries = dashboard_queries() + rule_exprs()
    for name, expr in queries:
        for metric in re.findall(r"\babn_\w+", expr):
            assert metric in EXPOSED, f"{name}: {metric} is not a metric of the service"
    jobs = {
        job["job_name"]
        for f in ("prometheus.yml", "prometheus-kubernetes.yml")
        for job in yaml.safe_load((DEPLOY / "prometheus" / f).read_text())["scrape_configs"]
    }
    for name, expr in queries:
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, f"{name}: job {job} is not scraped"


def test_no_dashboard_or_rule_queries_a_deprecated_metric() -> None:
    """Deprecated names are exported for one release for users' own queries; ours have moved."""
    for name, expr in dashboard_queries() + rule_exprs():
        assert "abn_layer_bits_total" not in expr, f"{name} still queries abn_layer_bits_total"


def test_dashboards_have_datasource_namespace_and_pod_variables() -> None:
    """Any Prometheus, any namespace and pod; "All" (`.*`) also matches series without the
    labels, as compose's Prometheus scrapes them."""
    for board in dashboards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert list(variables) == ["datasource", "namespace", "pod"]
        datasource = variables["datasource"]
        assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
        for name in ("namespace", "pod"):
            variable = variables[name]
            assert variable["type"] == "query"
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert re.fullmatch(
                rf'label_values\(up\{{job="abn-serve".*\}}, {name}\)', variable["query"]
            )
            assert variable["includeAll"] and variable["allValue"] == ".*"
            assert variable["current"]["value"] == "$__all"
        assert 'namespace=~"$namespace"' in variables["pod"]["query"]  # pods of the namespace


def test_every_panel_query_uses_the_variables() -> None:
    """Every panel and target asks the chosen data source, and every series selector is
    restricted to the chosen namespace and pod."""
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]
            selectors = re.findall(r"\b(abn_\w+|up)\b(\{[^}]*\})?", t["expr"])
            assert selectors, (panel["title"], t["expr"])
            for metric, matchers in selectors:
                for matcher in ('namespace=~"$namespace"', 'pod=~"$pod"'):
                    assert matcher in matchers, (panel["title"], metric, t["expr"])


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    for board in dashboards():  # the variable's default is compose's provisioned Prometheus
        (datasource,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert datasource["current"]["value"] in uids
    providers = yaml.safe_load((provisioning / "dashboards" / "abn-serve.yaml").read_text())
    compose = (ROOT / "compose.yaml").read_text()
    for provider in providers["providers"]:
        assert f"./deploy/grafana/dashboards:{provider['options']['path']}" in compose


def test_operations_doc_describes_every_panel_and_alert() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for title, _ in dashboard_queries():
        assert f"**{title}**" in doc, f"docs/operations.md does not describe panel {title!r}"
    for alert, _ in rule_exprs():
        assert f"### {alert}\n" in doc, f"docs/operations.md has no section for {alert}"


def test_every_abn_variable_compose_reads_is_one_abn_serve_accepts() -> None:
    """compose.yaml's own substitutions (${ABN_MODEL_NAME}, ...) come from .env or the shell,
    where `abn serve` sees them too and stops at an ABN_* name it does not know."""
    read = set(re.findall(r"\$\{(ABN_\w+)", (ROOT / "compose.yaml").read_text()))
    example = set(re.findall(r"^(ABN_\w+)=", (ROOT / ".env.example").read_text(), re.M))
    assert {"ABN_MODEL_STORE", "ABN_MODEL_NAME"} <= read and example <= read
    settings = {f"ABN_{name.upper()}" for name in Settings.model_fields}
    assert read - settings - OTHER_ABN_VARIABLES == set()


def test_compose_secrets_are_ignored_and_the_example_is_committed() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    example = (ROOT / ".env.example").read_text()
    assert "GRAFANA_ADMIN_PASSWORD=\n" in example  # empty: no password is shipped
