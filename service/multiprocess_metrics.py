"""``/metrics`` when several worker processes serve one port (``ABN_WORKERS`` > 1).

Each worker writes its samples to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (a
fresh temporary directory per server start, made and removed by :mod:`service.supervisor`);
whichever worker answers a scrape reads all of them, so every counter and histogram is the sum
over the processes (prometheus-client's multiprocess mode). Gauges say how they combine where
they are made (:mod:`service.metrics`): ``abn_pending_requests`` sums over live workers,
``abn_model_info`` is the largest live value.

The ``process_*`` series of the default registry describe one process, and the one answering a
scrape changes from scrape to scrape; here they are summed over the live workers instead (CPU
seconds, memory, open files), with the earliest start time and the lowest file limit, so rates
and totals mean the whole server. ``python_gc_*`` (one interpreter's internals) is left out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import PLATFORM_COLLECTOR, CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

# prometheus-client names each worker's files <kind>[_<mode>]_<pid>.db
_PID_IN_NAME = re.compile(r"_(\d+)\.db$")
# How a process_* value of several workers combines; every other one is summed.
_COMBINE = {"process_start_time_seconds": min, "process_max_fds": min}


def worker_pids(directory: str) -> list[int]:
    """The pids that wrote metric files in ``directory`` and are still running."""
    pids = set()
    for path in Path(directory).glob("*.db"):
        match = _PID_IN_NAME.search(path.name)
        if match:
            pids.add(int(match.group(1)))
    return sorted(pid for pid in pids if Path(f"/proc/{pid}").exists())


class WorkersProcessCollector:
    """``process_*`` of every live worker, combined into one series each."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, list[float]] = {}
        for pid in worker_pids(self.directory):
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in collector.collect():
                families.setdefault(family.name, family)
                values.setdefault(family.name, []).extend(s.value for s in family.samples)
        for name, family in families.items():
            combined = _COMBINE.get(name, sum)(values[name])
            out = Metric(family.name, family.documentation, family.type)
            sample = family.samples[0]
            out.add_sample(sample.name, sample.labels, combined)
            yield out


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """What a scrape of any worker exposes: every worker's metrics, combined."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    registry.register(WorkersProcessCollector(directory))
    registry.register(PLATFORM_COLLECTOR)
    return registry


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when this process is one of several workers."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
