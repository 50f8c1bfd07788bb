"""CPU time and peak memory of a server *and every process it started*, read from ``/proc``.

A server may be several processes: ``ABN_WORKERS`` front ends, uvicorn's worker processes,
LitServe's inference workers fed over queues. Comparing servers by their first process alone
would hide most of what some of them cost, so every figure here is summed over the process
tree. Peak memory is the sum of each process's own ``VmHWM``: an upper bound of the tree's
peak (each process peaks at its own moment, and pages shared after ``fork`` count once per
process), which is what an operator sizing a machine for the server must provision.

Run-queue wait (``/proc/<pid>/task/<tid>/schedstat``, the scheduler's own account) is the time
a thread was ready to run but had no CPU: on a machine shared with the load generator, a rise
in it says the server's latency went to the machine, not to the server's own work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loadtest.machine import proc_status_kib


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now (parents first); empty when ``root`` is gone."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    if _stat_fields(root) is None:
        return []
    tree, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        tree.append(pid)
        queue.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds used so far by each process (all its threads), by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def runqueue_wait_seconds(pids: list[int]) -> dict[int, float]:
    """Seconds each process's threads have spent ready to run but waiting for a CPU, by pid
    (absent where the kernel keeps no scheduler statistics)."""
    out = {}
    for pid in pids:
        waited = 0
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                waited += int(stat.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended while being read
        out[pid] = waited / 1e9
    return out


@dataclass(frozen=True)
class TreeUsage:
    """What a process tree used between two :func:`snapshot` calls."""

    cpu_seconds: float
    wall_seconds: float
    processes: int
    runqueue_wait_seconds: float = 0.0

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    cpu: dict[int, float]
    waited: dict[int, float]


def snapshot(root: int, at: float) -> Snapshot:
    tree = process_tree(root)
    return Snapshot(at, cpu_seconds(tree), runqueue_wait_seconds(tree))


def usage_between(before: Snapshot, after: Snapshot) -> TreeUsage:
    """CPU used by the tree between the snapshots; a process started in between counts from
    zero (all its CPU is inside the interval), one that ended in between is lost (its last
    interval cannot be read any more)."""
    used = sum(v - before.cpu.get(pid, 0.0) for pid, v in after.cpu.items())
    waited = sum(v - before.waited.get(pid, 0.0) for pid, v in after.waited.items())
    return TreeUsage(used, after.at - before.at, len(after.cpu), waited)


def tree_memory_mib(root: int, field: str) -> float | None:
    """Sum of ``field`` (``VmRSS`` now, ``VmHWM`` each process's peak) over the tree alive now,
    in MiB; ``None`` when ``root`` is gone."""
    readings = [proc_status_kib(pid, field) for pid in process_tree(root)]
    known = [kib for kib in readings if kib is not None]
    return sum(known) / 1024.0 if known else None
