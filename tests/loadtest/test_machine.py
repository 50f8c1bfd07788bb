"""loadtest.machine: per-thread CPU accounting of a process (what the bench splits by thread)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from loadtest.machine import cpu_ms_per_request, thread_cpu_seconds

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc only")


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_used_by_a_thread_is_charged_to_that_thread() -> None:
    pid = os.getpid()
    before = thread_cpu_seconds(pid)
    worker = threading.Thread(target=_spin, args=(0.3,))
    worker.start()
    worker.join()
    _spin(0.1)
    after = thread_cpu_seconds(pid)
    assert before is not None and after is not None and pid in after
    split = cpu_ms_per_request(pid, before, after, requests=10)
    assert split is not None
    # the worker's 0.3 s is gone with its thread; the main thread's 0.1 s remains (ticks: 10 ms)
    assert 8.0 <= split["event_loop"] <= 20.0, split
    assert split["total"] == pytest.approx(split["event_loop"] + split["other_threads"])


def test_a_gone_process_or_no_request_gives_none() -> None:
    assert cpu_ms_per_request(1, None, {1: 1.0}, 5) is None
    assert cpu_ms_per_request(1, {1: 0.0}, {1: 1.0}, 0) is None
    assert thread_cpu_seconds(2**22 + 12345) is None
