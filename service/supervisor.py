"""``ABN_WORKERS`` > 1: several serving processes on one port, and the small process that keeps
them.

Why processes: one process serves on one core at most (the event loop and the model thread
share the GIL), so on the 2-core machine a second worker, with its own model copy and batcher,
is what uses the second core (issue 19). The tiny model makes a copy per worker cheap; on a GPU,
where one copy must serve every front end, keep ``ABN_WORKERS=1``.

How: ``abn serve`` checks the settings and the model, then *replaces itself* (``exec``) with this
module, so the process that keeps the workers holds no torch and no model (a few MiB, where the
CLI's imports would have kept ~200). It binds the port once; every worker inherits that one
listening socket (the kernel hands each new connection to whichever worker accepts it first,
so an idle worker takes it). It makes a fresh directory for this start, holding the
``PROMETHEUS_MULTIPROC_DIR`` and the readiness markers (:mod:`service.worker_readiness`), and a
feedback key when ``ABN_FEEDBACK_KEY`` is unset, and gives them to every worker.

Signals: SIGTERM or SIGINT is passed to every worker, each of which drains as a single server
does (readiness 503, in-flight requests finished, exit 0); then the metrics directory is
removed and this process exits 0. A worker that exits while no signal was given (its model
failed to load, it crashed) stops the others, and this process exits with that worker's status
(1 when it died by a signal), so the orchestrator restarts the whole server.

Only the standard library, :mod:`service.logs` and :mod:`service.worker_readiness` are
imported here, on purpose.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from service.logs import configure_logging
from service.worker_readiness import EXPECTED_FILE, READY_DIR_VARIABLE

log = logging.getLogger("service")

BACKLOG = 2048  # pending connections the shared listening socket holds
POLL_SECONDS = 0.2  # how often the workers are checked while running
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # "<quota> <period>" or "max <period>"


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota (a
    container's CPU limit, which the affinity does not show), rounded up."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(CGROUP_CPU_MAX).read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker inherits (IPv6 when ``host`` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def worker_environment(count: int, run_dir: Path) -> dict[str, str]:
    """What every worker adds to this process's environment: one process each, the shared
    metrics and readiness directories (in ``run_dir``) and feedback key, and a fair share of
    the cores for torch."""
    env = dict(os.environ)
    env["ABN_WORKERS"] = "1"
    (run_dir / "metrics").mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
    ready = run_dir / "ready"
    ready.mkdir()
    (ready / EXPECTED_FILE).write_text(str(count))
    env[READY_DIR_VARIABLE] = str(ready)
    if not env.get("ABN_FEEDBACK_KEY"):
        env["ABN_FEEDBACK_KEY"] = secrets.token_hex(32)
    if not env.get("ABN_TORCH_THREADS"):  # torch's default, one per core each, oversubscribes
        env["ABN_TORCH_THREADS"] = str(max(1, usable_cores() // count))
    return env


class Supervisor:
    """Starts ``count`` workers on ``sock`` and keeps them until a signal or a failure."""

    def __init__(self, sock: socket.socket, count: int, env: dict[str, str]) -> None:
        self.sock = sock
        self.count = count
        self.env = env
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def start(self) -> None:
        fd = self.sock.fileno()
        command = [sys.executable, "-m", "service.worker", "--fd", str(fd)]
        for _ in range(self.count):
            if self.stopping:  # a signal came during start-up: start no more
                break
            self.workers.append(subprocess.Popen(command, env=self.env, pass_fds=(fd,)))
        log.info("started %d workers: pids %s", self.count, [w.pid for w in self.workers])

    def signal_workers(self, sig: int) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(sig)

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        """Pass SIGTERM/SIGINT on; the workers drain and exit by themselves."""
        self.stopping = True
        self.signal_workers(sig)

    def run(self) -> int:
        """Until every worker has exited; 0 after a signal and clean exits."""
        self.start()
        failed: int | None = None
        while any(w.poll() is None for w in self.workers):
            if failed is None and not self.stopping:
                dead = [w for w in self.workers if w.returncode is not None]
                if dead:
                    code = dead[0].returncode
                    failed = code if code > 0 else 1
                    log.error(
                        "worker %d exited with status %d while serving; stopping the others",
                        dead[0].pid,
                        code,
                    )
                    self.signal_workers(signal.SIGTERM)
            time.sleep(POLL_SECONDS)
        if failed is not None:
            return failed
        codes = [w.returncode for w in self.workers]
        return 0 if all(c == 0 for c in codes) else next(c if c > 0 else 1 for c in codes if c)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abn serve (supervisor)")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        sock = bind(args.host, args.port)
    except OSError as err:
        print(f"abn serve: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="abn-serve-"))  # this start's; removed at exit
    env = worker_environment(args.workers, run_dir)
    supervisor = Supervisor(sock, args.workers, env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.on_signal)
    try:
        return supervisor.run()
    finally:
        supervisor.signal_workers(signal.SIGKILL)  # only those still running: none, normally
        sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
