"""Throughput and latency from ``wrk`` (Debian's package), the client that costs the server
almost nothing.

On a 2-core machine the client shares the CPU with the server it measures: the project's own
Python generator spends 0.6-0.7 ms of CPU per request, so above a few hundred requests a second
it, not the server, sets the figure. ``wrk`` is C on epoll and spends a few microseconds a
request. It drives a closed loop (each connection sends its next request when the previous is
answered), so it has no open-loop mode; latency is per request, send to answer.

The requests are prepared files (:func:`write_request_set`): one body file per request and its
headers, cycled in order by ``wrk_requests.lua``. Its ``done()`` prints the summary as one
JSON line, parsed by :func:`parse_wrk_output`. The client's own CPU comes from ``wait4`` on the
``wrk`` process, so every run says what the client cost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).with_name("wrk_requests.lua")
JSON_PREFIX = "WRK_JSON "
TIMEOUT_SECONDS = 10  # wrk's own default (2 s) would drop slow answers from the latencies


class WrkError(RuntimeError):
    """``wrk`` is missing, failed, or printed no summary; the message has its output."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: ``requests`` counts every complete answer, errors by kind (``status``: an
    answer with status >= 400; ``timeout``, ``read``, ``write``, ``connect``: no answer)."""

    connections: int
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    client_cpu_s: float

    @property
    def ok(self) -> int:
        return self.requests - self.errors.get("status", 0)

    @property
    def throughput_rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def client_cpu_ms_per_request(self) -> float | None:
        return 1000.0 * self.client_cpu_s / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "requests": self.requests,
            "ok": self.ok,
            "duration_s": self.duration_s,
            "throughput_rps": self.throughput_rps,
            "errors": self.errors,
            "latency_ms": self.latency_ms,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_ms_per_request": self.client_cpu_ms_per_request,
        }


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The summary ``wrk_requests.lua`` printed, with durations in seconds and latencies in ms."""
    for line in stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            raw = json.loads(line[len(JSON_PREFIX) :])
            return {
                "requests": int(raw["requests"]),
                "duration_s": raw["duration_us"] / 1e6,
                "errors": {k: int(v) for k, v in raw["errors"].items()},
                "latency_ms": {k: v / 1000.0 for k, v in raw["latency_us"].items()},
            }
    raise WrkError(f"wrk printed no {JSON_PREFIX.strip()} summary:\n{stdout[-2000:]}")


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed: scripts/apt-install.sh wrk (or make bench)")
    return path


def write_request_set(directory: Path, requests: Iterable[tuple[bytes, Mapping[str, str]]]) -> Path:
    """Body files and the list ``wrk_requests.lua`` reads; identical bodies share one file."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[bytes, Path] = {}
    lines = []
    for body, headers in requests:
        path = files.get(body)
        if path is None:
            path = files[body] = directory / f"body-{len(files):05d}"
            path.write_bytes(body)
        lines.append("\t".join([str(path), *(f"{k}: {v}" for k, v in headers.items())]))
    listing = directory / "requests.tsv"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def wrk_command(url: str, listing: Path, connections: int, seconds: float) -> list[str]:
    """One wrk thread: it keeps up with any connection count here, and leaves the cores to
    the server."""
    return [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={TIMEOUT_SECONDS}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(listing),
    ]


def run_wrk(url: str, listing: Path, connections: int, seconds: float) -> WrkResult:
    """Drive ``url`` for ``seconds`` (whole seconds, wrk's unit) with ``connections``."""
    cmd = wrk_command(url, listing, connections, seconds)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + seconds + TIMEOUT_SECONDS + 30
        while True:  # wait4, not wait(): it also returns the CPU the client used
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    summary = parse_wrk_output(text)
    return WrkResult(
        connections=connections,
        client_cpu_s=usage.ru_utime + usage.ru_stime,
        **summary,
    )
