#!/usr/bin/env python3
"""Generate the Grafana dashboards of abn-serve with grafana-foundation-sdk.

The JSON under ``deploy/grafana/dashboards/`` is generated, committed and provisioned into
Grafana by compose.yaml; edit this script, never the JSON. ``tests/deploy`` fails when the
committed JSON differs from what this script writes, and runs every panel's PromQL against a
real Prometheus scraping a real ``abn serve``.

    .venv/bin/python deploy/grafana/generate_dashboards.py           # rewrite the JSON
    .venv/bin/python deploy/grafana/generate_dashboards.py --check   # exit 1 when stale

Queries use Grafana's ``$__rate_interval`` (short windows that follow the zoom) and
``$__range`` (the whole time range, for tables and totals). Series come from the Prometheus
job ``abn-serve`` (deploy/prometheus/*.yml), and metric names are the service's contract.

Three template variables make one dashboard serve every Prometheus: ``datasource`` (any
Prometheus data source; every panel and query uses it), ``namespace`` and ``pod`` (from the
labels Kubernetes scraping adds; every series selector is filtered by both). Both include
"All" with the value ``.*``, which also matches series that have no such label at all, so the
compose stack, whose Prometheus adds neither, shows everything with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
# The data source variable's default: the uid provisioned by
# deploy/grafana/provisioning/datasources/prometheus.yaml (compose.yaml's Prometheus).
PROVISIONED_DATASOURCE_UID = "prometheus"
# Every panel and query asks the data source the `datasource` variable names.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOB = "abn-serve"
RATE = "$__rate_interval"
RANGE = "$__range"
CLASSIFY = 'route="/classify"'
WIDTHS = "abn_layer_width_selections_total"
UTILIZATION_BUCKET = "abn_budget_utilization_ratio_bucket"
# "All" of the namespace and pod variables: a regex that also matches an absent label.
ALL = ".*"
# The matchers every series selector carries (see `series`).
SCOPE = ('namespace=~"$namespace"', 'pod=~"$pod"')


def series(metric: str, *matchers: str, **equal: str) -> str:
    """A selector of ``metric`` restricted to the chosen namespace and pod, plus ``matchers``
    (PromQL text) and ``equal`` (label="value")."""
    every = (*SCOPE, *matchers, *(f'{label}="{value}"' for label, value in equal.items()))
    return f"{metric}{{{', '.join(every)}}}"


def scope_variables() -> list[dashboard.DatasourceVariable | dashboard.QueryVariable]:
    """The data source, namespace and pod variables, in the order Grafana shows them.

    The pod list follows the chosen namespace. Values come from ``up`` of the abn-serve job,
    which exists for every discovered replica, serving or not.
    """
    datasource = (
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(VariableOption(selected=True, text="Prometheus", value=PROVISIONED_DATASOURCE_UID))
    )
    up = f'up{{job="{JOB}"}}'
    namespace = label_variable("namespace", "Namespace", f"label_values({up}, namespace)")
    pod_up = f'up{{job="{JOB}", namespace=~"$namespace"}}'
    pod = label_variable("pod", "Pod", f"label_values({pod_up}, pod)")
    return [datasource, namespace, pod]


def label_variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    """A multi-value variable of a label's values, with "All" (the default) meaning any value
    or none."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL)
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


@dataclass(frozen=True)
class Query:
    """One PromQL target: its expression, legend and whether Grafana asks for one instant."""

    expr: str
    legend: str = "__auto"
    instant: bool = False
    fmt: PromQueryFormat | None = None


def quantile(q: float, metric: str, *matchers: str) -> str:
    """The q-quantile of a histogram across every chosen replica, over the rate window."""
    bucket = series(f"{metric}_bucket", *matchers)
    return f"histogram_quantile({q}, sum by (le) (rate({bucket}[{RATE}])))"


def mean(metric: str, *matchers: str) -> str:
    """The mean of a histogram's observations over the rate window (sum / count)."""
    total, count = series(f"{metric}_sum", *matchers), series(f"{metric}_count", *matchers)
    return f"sum(rate({total}[{RATE}])) / sum(rate({count}[{RATE}]))"


def ratio_of_requests(*status_matchers: str) -> str:
    """Share of /classify answers whose status code matches (0, not nothing, when none)."""
    matching = series("abn_requests_total", CLASSIFY, *status_matchers)
    every = series("abn_requests_total", CLASSIFY)
    return f"(sum(rate({matching}[{RATE}])) or vector(0)) / sum(rate({every}[{RATE}]))"


def target(query: Query, ref_id: str) -> prometheus.Dataquery:
    """The SDK's Prometheus query with a stable refId and the provisioned datasource."""
    builder = (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
    )
    builder = builder.instant() if query.instant else builder.range()
    if query.fmt is not None:
        builder = builder.format(query.fmt)
    return builder


def with_queries(panel: Any, queries: list[Query]) -> Any:
    """Attach the queries (refIds A, B, ...) and the datasource to any panel builder."""
    panel = panel.datasource(DATASOURCE)
    for i, query in enumerate(queries):
        panel = panel.with_target(target(query, chr(ord("A") + i)))
    return panel


def legend_table() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )


def series_panel(
    title: str,
    description: str,
    queries: list[Query],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    min_val: float | None = 0,
    max_val: float | None = None,
    stacked: bool = False,
) -> timeseries.Panel:
    """A time series panel with a table legend (mean, max, last)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .legend(legend_table())
    )
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if stacked:
        panel = panel.stacking(
            common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
        ).fill_opacity(60)
    return with_queries(panel, queries)


def heatmap_panel(title: str, description: str, metric: str, unit: str) -> heatmap.Panel:
    """A heatmap of a histogram's buckets as Prometheus stores them (no re-bucketing)."""
    panel = (
        heatmap.Panel()
        .title(title)
        .description(description)
        .span(8)
        .height(8)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_models.HeatmapColorMode.SCHEME)
            .scheme("Spectral")
            .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .fill("dark-orange")
        )
        .cell_values(heatmap.CellValues().unit("short"))
    )
    query = Query(
        f"sum by (le) (increase({series(f'{metric}_bucket')}[{RATE}]))",
        legend="{{le}}",
        fmt=PromQueryFormat.HEATMAP,
    )
    return with_queries(panel, [query])


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def stat_panel(
    title: str, description: str, queries: list[Query], unit: str, steps: dashboard.ThresholdsConfig
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(6)
        .height(8)
        .thresholds(steps)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    return with_queries(panel, queries)


def table_panel(
    title: str,
    description: str,
    queries: list[Query],
    transformations: list[DataTransformerConfig],
    *,
    unit: str = "short",
    width: int = 12,
) -> table.Panel:
    panel = table.Panel().title(title).description(description).unit(unit).span(width).height(8)
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    return with_queries(panel, queries)


# -- the dashboard ---------------------------------------------------------------------------
def service_dashboard() -> dashboard.Dashboard:
    """abn-serve: traffic, latency, batching, BitOps, bit-widths, accuracy, model."""
    d = (
        dashboard.Dashboard("abn-serve: adaptive-precision classifier")
        .uid("abn-serve")
        .description(
            "Requests, latency, batching, BitOps spent against budgets, bit-width choices and "
            "accuracy (expected from the model card, live from /feedback) of abn-serve. "
            "Generated by deploy/grafana/generate_dashboards.py; see docs/operations.md."
        )
        .tags(["abn-serve", "ml-serving"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("10s")
        .timezone("browser")
    )
    for variable in scope_variables():
        d = d.with_variable(variable)

    d = d.with_row(dashboard.Row("Traffic"))
    d = d.with_panel(
        series_panel(
            "Request rate by status code (/classify)",
            "Answers per second of POST /classify, by HTTP status: 200 served; 4xx the "
            "client's fault (400 bad image, 408 body too slow, 413 too large, 415 type, 422 "
            "budget); 429 shed because the queue is full; 499 the client left before its "
            "answer (not an error of the server); 500 inference failed; 503 not ready, "
            "draining or over ABN_LIMIT_CONCURRENCY; 504 deadline passed.",
            [
                Query(
                    f"sum by (status_code) "
                    f"(rate({series('abn_requests_total', CLASSIFY)}[{RATE}]))",
                    legend="{{status_code}}",
                )
            ],
            "reqps",
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Request rate by route",
            "Requests per second on every route, probes and scrapes included: is feedback "
            "arriving, are probes and scrapes hitting the replicas?",
            [
                Query(
                    f"sum by (route) (rate({series('abn_requests_total')}[{RATE}]))",
                    legend="{{route}}",
                )
            ],
            "reqps",
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Error, shed and client-error ratio (/classify)",
            "Share of /classify requests that are 5xx (the service failed: alert above 1%), "
            "429 (load shed: scale out), 499 (the client left before its answer: its own "
            "timeout, or a crash; not counted as an error) and other 4xx (clients sending bad "
            "requests).",
            [
                Query(ratio_of_requests('status_code=~"5.."'), legend="5xx"),
                Query(ratio_of_requests('status_code="429"'), legend="429 (queue full)"),
                Query(ratio_of_requests('status_code="499"'), legend="499 (client left)"),
                Query(
                    ratio_of_requests('status_code=~"4.."', 'status_code!~"429|499"'),
                    legend="other 4xx",
                ),
            ],
            "percentunit",
            width=8,
        )
    )

    d = d.with_row(dashboard.Row("Latency"))
    d = d.with_panel(
        series_panel(
            "Latency p50 / p95 / p99 (/classify)",
            "End-to-end time in the server of POST /classify: decoding, queueing, inference "
            "and the answer. The p99 alert fires above 500 ms.",
            [
                Query(
                    quantile(q, "abn_request_duration_seconds", CLASSIFY),
                    legend=f"p{int(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            "s",
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Queue time p50 / p95 / p99",
            "How long requests wait for a batch to start. Growing queue time with flat "
            "inference time means too few replicas for the load.",
            [
                Query(quantile(q, "abn_queue_duration_seconds"), legend=f"p{int(q * 100)}")
                for q in (0.5, 0.95, 0.99)
            ],
            "s",
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Inference time per batch (mean, p99)",
            "Time of one batch through the network, layer by layer with the policy. Rises "
            "with batch size and with the bit-widths chosen; a jump after a deploy points at "
            "the device or the model.",
            [
                Query(mean("abn_inference_duration_seconds"), legend="mean"),
                Query(quantile(0.99, "abn_inference_duration_seconds"), legend="p99"),
            ],
            "s",
            width=8,
        )
    )

    d = d.with_row(dashboard.Row("Batching and load"))
    d = d.with_panel(
        series_panel(
            "Batch size (mean, p50, p95)",
            "Samples per batch. Near 1: little concurrency, latency-bound. At "
            "ABN_MAX_BATCH_SIZE: the batcher is saturated and queue time will grow.",
            [
                Query(mean("abn_batch_size"), legend="mean"),
                Query(quantile(0.5, "abn_batch_size"), legend="p50"),
                Query(quantile(0.95, "abn_batch_size"), legend="p95"),
            ],
            "short",
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Pending requests (queued + running)",
            "Requests inside each replica, waiting or running. The autoscaler keeps the "
            "per-pod average near its target (deploy/k8s/base/hpa.yaml); ABN_MAX_QUEUE_SIZE more "
            "waiting are answered 429.",
            [
                Query(f"sum({series('abn_pending_requests')})", legend="all replicas"),
                Query(
                    f"sum by (instance) ({series('abn_pending_requests')})",
                    legend="{{instance}}",
                ),
            ],
            "short",
            width=8,
        )
    )
    d = d.with_panel(
        series_panel(
            "Batches and images per second",
            "Throughput of the batching engine: images classified and batches run per "
            "second. Their ratio is the mean batch size.",
            [
                Query(f"sum(rate({series('abn_bitops_used_count')}[{RATE}]))", legend="images/s"),
                Query(f"sum(rate({series('abn_batch_size_count')}[{RATE}]))", legend="batches/s"),
            ],
            "short",
            width=8,
        )
    )

    d = d.with_row(dashboard.Row("Compute: BitOps against budget"))
    d = d.with_panel(
        series_panel(
            "BitOps per image: used vs budget (mean, p95)",
            "What images cost against what clients allowed. Used stays at or under the "
            "budget by construction; a wide gap means easy traffic or generous budgets.",
            [
                Query(mean("abn_bitops_used"), legend="used (mean)"),
                Query(mean("abn_bitops_budget"), legend="budget (mean)"),
                Query(quantile(0.95, "abn_bitops_used"), legend="used (p95)"),
                Query(quantile(0.95, "abn_bitops_budget"), legend="budget (p95)"),
            ],
            "short",
        )
    )
    d = d.with_panel(
        series_panel(
            "Budget utilization (used / budget)",
            "How much of its budget an image spends: the ratio of total BitOps used to total "
            "budget, and the per-image ratio's mean and p10. Low values mean the policy "
            "finds most images easy and saves compute.",
            [
                Query(
                    f"sum(rate({series('abn_bitops_used_sum')}[{RATE}])) / "
                    f"sum(rate({series('abn_bitops_budget_sum')}[{RATE}]))",
                    legend="total used / total budget",
                ),
                Query(mean("abn_budget_utilization_ratio"), legend="per image (mean)"),
                Query(quantile(0.1, "abn_budget_utilization_ratio"), legend="per image (p10)"),
            ],
            "percentunit",
            max_val=1,
            width=6,
        )
    )
    d = d.with_panel(
        stat_panel(
            "Budget violations (used > budget)",
            "Answers that cost more than their budget in the time range: the count of "
            "used/budget observations above 1. Must be 0; anything else is a bug "
            "(alert ABNBudgetViolation).",
            [
                Query(
                    f"sum(increase({series(UTILIZATION_BUCKET, le='+Inf')}[{RANGE}])) - "
                    f"sum(increase({series(UTILIZATION_BUCKET, le='1.0')}[{RANGE}]))",
                    legend="violations",
                    instant=True,
                )
            ],
            "short",
            thresholds((None, "green"), (1, "red")),
        )
    )
    d = d.with_panel(
        heatmap_panel(
            "BitOps used per image (distribution)",
            "Per-image cost across the model's range, from the cheapest configuration to the "
            "dearest: one band means one kind of traffic and budget; two bands, two.",
            "abn_bitops_used",
            "short",
        )
    )
    d = d.with_panel(
        heatmap_panel(
            "BitOps budgets requested (distribution)",
            "The budgets that applied (X-BitOps-Budget, else ABN_DEFAULT_BUDGET): what "
            "clients ask for.",
            "abn_bitops_budget",
            "short",
        )
    )
    d = d.with_panel(
        heatmap_panel(
            "Budget utilization (distribution)",
            "Per-image used/budget: mass near 1 means the budget binds (images would take "
            "more bits if allowed); mass low means the policy stops early on easy images.",
            "abn_budget_utilization_ratio",
            "percentunit",
        )
    )

    d = d.with_row(dashboard.Row("Bit-widths chosen"))
    d = d.with_panel(
        table_panel(
            "Share of each bit-width per layer",
            "For every switchable layer (rows), the share of images run at each bit-width "
            "(columns) over the time range. Shows where the policy spends its bits: layers "
            "that stay at high widths are the sensitive ones.",
            [
                Query(
                    f"sum by (layer, width) (increase({series(WIDTHS)}[{RANGE}])) "
                    f"/ ignoring (width) group_left () "
                    f"sum by (layer) (increase({series(WIDTHS)}[{RANGE}]))",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            [
                DataTransformerConfig(
                    id_val="groupingToMatrix",
                    options={
                        "columnField": "width",
                        "rowField": "layer",
                        "valueField": "Value",
                        "emptyValue": "zero",
                    },
                )
            ],
            unit="percentunit",
            width=14,
        )
        .cell_options(common.TableColoredBackgroundCellOptions())
        .thresholds(thresholds((None, "transparent"), (0.25, "light-blue"), (0.5, "blue")))
    )
    d = d.with_panel(
        series_panel(
            "Bit-width mix over time (all layers)",
            "Share of layer executions at each width, all layers together: shifts when "
            "budgets or traffic change.",
            [
                Query(
                    f"sum by (width) (rate({series(WIDTHS)}[{RATE}])) / "
                    f"scalar(sum(rate({series(WIDTHS)}[{RATE}])))",
                    legend="{{width}} bits",
                )
            ],
            "percentunit",
            width=10,
            max_val=1,
            stacked=True,
        )
    )

    d = d.with_row(dashboard.Row("Accuracy"))
    d = d.with_panel(
        series_panel(
            "Expected accuracy (model card)",
            "The test-set accuracy the model card states for the budgets (adaptive) or "
            "configurations (pinned) actually served: what accuracy this traffic should get.",
            [
                Query(mean("abn_expected_accuracy"), legend="mean"),
                Query(quantile(0.1, "abn_expected_accuracy"), legend="p10"),
            ],
            "percentunit",
            width=8,
            max_val=1,
        )
    )
    d = d.with_panel(
        series_panel(
            "Live accuracy from feedback vs expected (1h)",
            "Accuracy measured from POST /feedback (true labels sent back) over the last hour, "
            "against the model card's expectation over the same hour. Live well below "
            "expected: drift or a preprocessing change (alert ABNLiveAccuracyBelowExpected).",
            [
                Query(
                    f"sum(increase({series('abn_feedback_total', outcome='correct')}[1h])) "
                    f"/ sum(increase({series('abn_feedback_total')}[1h]))",
                    legend="live (feedback)",
                ),
                Query(
                    f"sum(increase({series('abn_expected_accuracy_sum')}[1h])) "
                    f"/ sum(increase({series('abn_expected_accuracy_count')}[1h]))",
                    legend="expected (model card)",
                ),
            ],
            "percentunit",
            width=8,
            max_val=1,
        )
    )
    d = d.with_panel(
        series_panel(
            "Feedback rate by outcome",
            "Labelled answers per second, correct and incorrect: how much the live accuracy "
            "can be trusted (few per hour: wide error bars).",
            [
                Query(
                    f"sum by (outcome) (rate({series('abn_feedback_total')}[{RATE}]))",
                    legend="{{outcome}}",
                )
            ],
            "reqps",
            width=8,
            stacked=True,
        )
    )
    d = d.with_panel(
        series_panel(
            "Prediction confidence (mean, p10, share below 0.5)",
            "Top-1 probability of the answers. Falling confidence at the same budgets is an "
            "early sign of drift, before feedback arrives.",
            [
                Query(mean("abn_prediction_confidence"), legend="mean"),
                Query(quantile(0.1, "abn_prediction_confidence"), legend="p10"),
                Query(
                    f"sum(rate({series('abn_prediction_confidence_bucket', le='0.5')}[{RATE}])) "
                    f"/ sum(rate({series('abn_prediction_confidence_count')}[{RATE}]))",
                    legend="share below 0.5",
                ),
            ],
            "percentunit",
            width=12,
            max_val=1,
        )
    )
    d = d.with_panel(
        heatmap_panel(
            "Prediction confidence (distribution)",
            "Top-1 probability of every answer over time.",
            "abn_prediction_confidence",
            "percentunit",
        ).span(12)
    )

    d = d.with_row(dashboard.Row("Model and replicas"))
    d = d.with_panel(
        table_panel(
            "Model info",
            "What is loaded: model name, version and device, with the number of replicas "
            "serving each. Two rows during a rollout; one afterwards.",
            [
                Query(
                    f"count by (model_name, model_version, device) ({series('abn_model_info')})",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ],
            [
                DataTransformerConfig(
                    id_val="organize",
                    options={
                        "excludeByName": {"Time": True},
                        "renameByName": {
                            "model_name": "model",
                            "model_version": "version",
                            "Value": "replicas",
                        },
                    },
                )
            ],
            width=12,
        )
    )
    d = d.with_panel(
        stat_panel(
            "Replicas scraped (up / discovered)",
            "Replicas whose /metrics Prometheus reached at the last scrape, out of those it "
            "discovered. Fewer up than discovered: a replica is down (alert ABNTargetDown).",
            [
                Query(f"sum({series('up', job=JOB)})", legend="up", instant=True),
                Query(f"count({series('up', job=JOB)})", legend="discovered", instant=True),
            ],
            "short",
            thresholds((None, "red"), (1, "green")),
        ).span(12)
    )
    return d


DASHBOARDS = {"abn-serve.json": service_dashboard}


def render(builder: dashboard.Dashboard) -> str:
    """Stable JSON (sorted keys, 2-space indent, final newline) so the diff test is exact.

    Panels are numbered here, in layout order, so that panel links (``viewPanel=N``) stay
    valid as long as panels keep their places.
    """
    model = builder.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output directory")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when a file is stale"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.out / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
