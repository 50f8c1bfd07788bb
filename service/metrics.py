"""Prometheus metrics of the contract (prefix ``abn_``), on a registry of the app's own.

A dedicated :class:`CollectorRegistry` per app keeps two apps in one process (the tests) from
colliding; the process, platform (``python_info``) and garbage-collector collectors are
registered on it explicitly, since only the global default registry gets them by itself.
Request metrics exist from the start; model metrics (whose buckets come from the model's own
min..max BitOps) are created when the model has loaded, so ``/metrics`` answers while the model
is loading.

The output passes ``promtool check metrics``:

* no ``*_created`` series: prometheus_client would add one per counter and histogram child,
  doubling the series count for a timestamp Prometheus (text format 0.0.4) never uses;
* ``abn_layer_bits_total`` is rejected by promtool (it reads ``bits`` as a unit and asks for
  bytes); it is superseded by ``abn_layer_width_selections_total`` (labels ``layer``,
  ``width``), and still exported for this release (the contract lists it), deprecated,
  unless ``ABN_DEPRECATED_METRICS=false``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.registry import Collector

from service.multiprocess_metrics import multiprocess_registry

# Process-wide in prometheus_client, read when a metric is created: so before any is.
disable_created_metrics()

# The standard collectors the default registry carries (process_*, python_info, python_gc_*).
STANDARD_COLLECTORS: tuple[Collector, ...] = (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)
DEPRECATED_LAYER_BITS = "abn_layer_bits_total"

SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
RATIO_BUCKETS = tuple(round(x, 2) for x in np.linspace(0.05, 1.0, 20))
BITOPS_BUCKETS_COUNT = 20


def bitops_buckets(min_bitops: float, max_bitops: float) -> tuple[float, ...]:
    """Buckets from the cheapest to the dearest configuration, geometrically spaced (the
    cost grows with the square of the width, so low budgets need the finer resolution)."""
    low, high = max(min_bitops, 1.0), max(max_bitops, min_bitops * 1.0001, 1.0)
    edges = np.geomspace(low, high, BITOPS_BUCKETS_COUNT)
    inner = tuple(float(f"{e:.6g}") for e in edges[1:-1])
    return (float(low), *inner, float(high))  # exact ends: the cheapest lands in the first


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Every size up to 16, then powers of two, up to the largest batch."""
    sizes = set(range(1, min(max_batch_size, 16) + 1))
    p = 32
    while p < max_batch_size:
        sizes.add(p)
        p *= 2
    sizes.add(max_batch_size)
    return tuple(float(s) for s in sorted(sizes))


class ServiceMetrics:
    """Every metric of the contract; methods named after what happened."""

    def __init__(
        self,
        max_batch_size: int,
        *,
        deprecated_names: bool = True,
        multiprocess_dir: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Several workers on one port: a scrape shows all of them (service.multiprocess_metrics)
        self._exposed = (
            self.registry if multiprocess_dir is None else multiprocess_registry(multiprocess_dir)
        )
        r = self.registry
        for collector in STANDARD_COLLECTORS:
            r.register(collector)  # the same objects in every registry: they only read
        self.deprecated_names = deprecated_names
        self._define_request_metrics(r, max_batch_size)
        self._define_answer_metrics(r)
        self.budget: Histogram | None = None
        self.used: Histogram | None = None
        self.layer_widths: Counter | None = None
        self.layer_bits: Counter | None = None  # deprecated: abn_layer_width_selections_total
        self._layer_children: dict[tuple[str, int], tuple[Counter, ...]] = {}
        # (route, status) -> its request counter and duration children; routes are bounded
        # (service.middleware.route_label) and so are statuses
        self._request_series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def _define_request_metrics(self, r: CollectorRegistry, max_batch_size: int) -> None:
        """How requests travel: counts, durations, queueing, batches."""
        self.requests = Counter(
            "abn_requests_total", "every request", ["route", "status_code"], registry=r
        )
        self.request_duration = Histogram(
            "abn_request_duration_seconds",
            "end to end, in the server",
            ["route"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "abn_queue_duration_seconds",
            "waiting for a batch",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "abn_inference_duration_seconds",
            "one batch through the network",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "abn_batch_size",
            "samples per batch",
            buckets=batch_buckets(max_batch_size),
            registry=r,
        )
        self.pending = Gauge(
            "abn_pending_requests",
            "queued plus running",
            registry=r,
            multiprocess_mode="livesum",  # several workers: their sum
        )

    def _define_answer_metrics(self, r: CollectorRegistry) -> None:
        """What the answers were: confidence, expected and live accuracy, budget use, the
        model (the BitOps metrics wait for the model's cost range: :meth:`bind_model`)."""
        self.feedback = Counter(
            "abn_feedback_total", "live accuracy from /feedback", ["outcome"], registry=r
        )
        for outcome in ("correct", "incorrect"):
            self.feedback.labels(outcome=outcome)
        self.prediction_confidence = Histogram(
            "abn_prediction_confidence", "top-1 probability", buckets=RATIO_BUCKETS, registry=r
        )
        self.expected_accuracy = Histogram(
            "abn_expected_accuracy",
            "accuracy the model card predicts for the configuration chosen",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.utilization = Histogram(
            "abn_budget_utilization_ratio",
            "used / budget, 0 to 1",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "abn_model_info",
            "what is loaded",
            ["model_name", "model_version", "device"],
            registry=r,
            multiprocess_mode="livemax",  # several workers: 1, not one per worker
        )

    def bind_model(
        self,
        *,
        name: str,
        version: str,
        device: str,
        layer_names: list[str],
        bit_candidates: list[int],
        min_bitops: float,
        max_bitops: float,
    ) -> None:
        """Create the model-shaped metrics once the model is known."""
        r = self.registry
        buckets = bitops_buckets(min_bitops, max_bitops)
        self.budget = Histogram(
            "abn_bitops_budget", "budgets that applied", buckets=buckets, registry=r
        )
        self.used = Histogram(
            "abn_bitops_used", "BitOps spent per image", buckets=buckets, registry=r
        )
        self.layer_widths = Counter(
            "abn_layer_width_selections_total",
            "times each width was chosen for each switchable layer",
            ["layer", "width"],
            registry=r,
        )
        if self.deprecated_names:
            self.layer_bits = Counter(
                DEPRECATED_LAYER_BITS,
                "DEPRECATED, removed in the next release: use abn_layer_width_selections_total "
                "(label width instead of bits). Chosen width per layer",
                ["layer", "bits"],
                registry=r,
            )
        # Every series exists from the start, at 0; the children are kept so that a request
        # does not pay a labels() lookup per layer.
        self._layer_names = list(layer_names)
        self._layer_children = {
            (layer, bits): self._layer_series(layer, bits)
            for layer in layer_names
            for bits in bit_candidates
        }
        self.model_info.labels(model_name=name, model_version=version, device=device).set(1)

    def _layer_series(self, layer: str, bits: int) -> tuple[Counter, ...]:
        """The children counting one (layer, width) choice: the new name, and the old one
        while it is still exported."""
        assert self.layer_widths is not None
        series = [self.layer_widths.labels(layer=layer, width=str(bits))]
        if self.layer_bits is not None:
            series.append(self.layer_bits.labels(layer=layer, bits=str(bits)))
        return tuple(series)

    # -- events -----------------------------------------------------------------------------
    def request_done(self, route: str, status_code: int, seconds: float) -> None:
        series = self._request_series.get((route, status_code))
        if series is None:  # a labels() lookup once per (route, status), not per request
            series = (
                self.requests.labels(route=route, status_code=str(status_code)),
                self.request_duration.labels(route=route),
            )
            self._request_series[(route, status_code)] = series
        series[0].inc()
        series[1].observe(seconds)

    def batch_done(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_duration.observe(seconds)

    def classified(
        self,
        *,
        budget: float,
        bitops: float,
        confidence: float,
        expected_accuracy: float | None,
    ) -> None:
        """One answered image, but for its widths (:meth:`widths_chosen`)."""
        assert self.budget is not None and self.used is not None
        self.budget.observe(budget)
        self.used.observe(bitops)
        # Not capped at 1: a violation must land in the +Inf bucket where the alert sees it.
        self.utilization.observe(max(bitops / budget, 0.0))
        self.prediction_confidence.observe(confidence)
        if expected_accuracy is not None:
            self.expected_accuracy.observe(expected_accuracy)

    def widths_chosen(self, configurations: Iterable[Sequence[int]]) -> None:
        """Count the width of each layer of answered images (one configuration per image):
        one increment per (layer, width) pair among them, by how many chose it. Under several
        workers an increment is a write to a shared file (~1.3 µs on the 2-core machine,
        ``scripts/hot_path_pieces.py``), so a batch of 32 images pays for a few pairs, not for
        8 layers x 32 images (issue 19)."""
        tally: collections.Counter[tuple[int, int]] = collections.Counter()
        # a batch holds few distinct configurations: each is expanded once, with its count
        for widths, images in collections.Counter(map(tuple, configurations)).items():
            for pair in enumerate(widths):
                tally[pair] += images
        for (index, bits), count in tally.items():
            layer = self._layer_names[index]
            children = self._layer_children.get((layer, bits))
            if children is None:  # not a candidate of the model this registry was made for
                children = self._layer_series(layer, bits)
            for child in children:
                child.inc(count)

    def exposition(self) -> tuple[bytes, str]:
        """The text format (0.0.4: what every Prometheus version parses) and its content type."""
        return generate_latest(self._exposed), CONTENT_TYPE_PLAIN_0_0_4
