"""Readiness of a server with several workers: ``/readyz`` is 200 only once *every* worker has
loaded and warmed its model.

Why: a load balancer or Kubernetes probes the port, and each probe reaches whichever worker
accepts it. Per-worker readiness would let the first worker to finish loading mark the whole
server ready while the others still answer ``/classify`` with 503. So each worker, once ready,
leaves a marker (a file named by its pid) in a directory the supervisor made for this start,
and ``/readyz`` counts the markers against the number of workers the supervisor wrote there.
Draining is still per worker: a worker that got SIGTERM answers 503 at once.
"""

from __future__ import annotations

import os
from pathlib import Path

READY_DIR_VARIABLE = "ABNSERVE_READY_DIR"  # set by service/supervisor.py for its workers
EXPECTED_FILE = "workers"  # in that directory: how many workers the server runs


class WorkerReadiness:
    """Whether all workers are ready; always true for a server of one process."""

    def __init__(self, directory: str | None) -> None:
        self.directory = Path(directory) if directory else None

    @classmethod
    def from_environment(cls) -> WorkerReadiness:
        return cls(os.environ.get(READY_DIR_VARIABLE))

    def mark_ready(self) -> None:
        if self.directory is not None:
            (self.directory / str(os.getpid())).touch()

    def count(self) -> tuple[int, int]:
        """(workers ready, workers in all)."""
        if self.directory is None:
            return 1, 1
        expected = int((self.directory / EXPECTED_FILE).read_text())
        return sum(1 for p in self.directory.iterdir() if p.name != EXPECTED_FILE), expected

    def all_ready(self) -> bool:
        ready, expected = self.count()
        return ready >= expected
