"""loadtest.proctree: a server's CPU and memory summed over every process it started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from loadtest.machine import proc_status_kib
from loadtest.proctree import process_tree, snapshot, tree_memory_mib, usage_between

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux /proc only")

# a parent that starts a child; told to (on the stdin they share), the child spins on the CPU for
# 0.4 s, says so (on the stdout they share) and sleeps
CHILD = "\n".join(
    [
        "import sys, time",
        "sys.stdin.readline()",
        "end = time.process_time() + 0.4",
        "while time.process_time() < end: pass",
        "print('done', flush=True)",
        "time.sleep(60)",
    ]
)
PARENT = (
    "import subprocess, sys, time; "
    f"subprocess.Popen([sys.executable, '-c', {CHILD!r}]); time.sleep(60)"
)


@pytest.fixture()
def parent() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        for pid in reversed(process_tree(proc.pid)):
            os.kill(pid, 9)
        proc.wait()


def _wait_for_tree(pid: int, size: int) -> list[int]:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        tree = process_tree(pid)
        if len(tree) >= size:
            return tree
        time.sleep(0.05)
    raise AssertionError(f"the tree of {pid} never had {size} processes")


def _let_the_child_spin(parent: subprocess.Popen[bytes]) -> None:
    assert parent.stdin is not None and parent.stdout is not None
    parent.stdin.write(b"go\n")
    parent.stdin.flush()
    assert parent.stdout.readline() == b"done\n"


def test_the_cpu_of_a_grandchild_counts_for_the_root(parent: subprocess.Popen[bytes]) -> None:
    tree = _wait_for_tree(parent.pid, 2)
    assert tree[0] == parent.pid
    before = snapshot(parent.pid, time.monotonic())
    _let_the_child_spin(parent)
    usage = usage_between(before, snapshot(parent.pid, time.monotonic()))
    assert usage.processes == 2
    assert 0.3 <= usage.cpu_seconds <= 0.6, usage  # the child's 0.4 s, in 10 ms ticks
    assert usage.cores == pytest.approx(usage.cpu_seconds / usage.wall_seconds)


@pytest.mark.parametrize("field", ["VmHWM", "VmRSS"])
def test_memory_is_the_sum_over_the_tree(parent: subprocess.Popen[bytes], field: str) -> None:
    tree = _wait_for_tree(parent.pid, 2)
    _let_the_child_spin(parent)  # then both sleep: their memory stays put
    peaks = [proc_status_kib(pid, field) for pid in tree]
    total = tree_memory_mib(parent.pid, field)
    assert total is not None and all(p is not None for p in peaks)
    assert total == pytest.approx(sum(p for p in peaks if p) / 1024.0, rel=0.05)


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="no scheduler statistics")
def test_a_process_waiting_for_a_busy_cpu_shows_runqueue_wait() -> None:
    """Two processes spinning on one CPU: each is ready half the time with no CPU to run on."""
    cpu = min(os.sched_getaffinity(0))
    spin = (
        f"import os, time; os.sched_setaffinity(0, {{{cpu}}}); end = time.monotonic() + 3\n"
        "while time.monotonic() < end: pass"
    )
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        before = snapshot(spinners[0].pid, time.monotonic())
        time.sleep(1.5)
        usage = usage_between(before, snapshot(spinners[0].pid, time.monotonic()))
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert 0.3 <= usage.runqueue_wait_seconds <= usage.wall_seconds, usage


def test_a_gone_process_has_no_tree() -> None:
    assert process_tree(2**22 + 12345) == []
    assert tree_memory_mib(2**22 + 12345, "VmRSS") is None
