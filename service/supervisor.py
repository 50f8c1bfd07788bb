"""``ABN_WORKERS`` > 1, or ``ABN_MODEL_PROCESS=shared``: several serving processes on one port,
and the small process that keeps them.

Why processes: one process serves on one core at most (the event loop and the model thread
share the GIL), so on the 2-core machine a second worker, with its own model copy and batcher,
is what uses the second core (issue 19). The tiny model makes a copy per worker cheap
(``ABN_MODEL_PROCESS=per-worker``, the default). On a GPU, where one copy must serve every
front end, ``ABN_MODEL_PROCESS=shared`` starts one more process, the model owner
(:mod:`service.model_owner`), which loads the model and runs the one batching engine; the
workers are then front ends (HTTP, decoding, validation) that hand each job to it over a Unix
socket in this start's directory (:mod:`service.owner_client`).

How: ``abn serve`` checks the settings and the model, then *replaces itself* (``exec``) with this
module, so the process that keeps the workers holds no torch and no model (a few MiB, where the
CLI's imports would have kept ~200). It binds one listening socket per worker, all on the one
port with ``SO_REUSEPORT``, and each worker inherits its own: the kernel spreads new
connections over the sockets by a hash of their addresses, so each worker gets its share. (One
socket inherited by every worker, as before, let whichever worker was awake accept them:
128 connections opened together split 117 / 11 or 36 / 92 on the 2-core machine, one core
saturated while the other idled; ``ss -tnp`` during a wrk run, issue 19.) A plain bind of the
port first proves it free, so a second server on a port in use still fails at once instead of
joining the group. It makes a fresh directory for this start, holding the
``PROMETHEUS_MULTIPROC_DIR``, the readiness markers (:mod:`service.worker_readiness`) and the
model owner's socket, and a feedback key when ``ABN_FEEDBACK_KEY`` is unset, and gives them to
every worker.

Signals: SIGTERM or SIGINT is passed to every worker, each of which drains as a single server
does (readiness 503, in-flight requests finished, exit 0); once all have exited, the model
owner gets SIGTERM, drains its engine and exits; then the directory is removed and this process
exits 0. A worker or the model owner that exits while no signal was given (its model failed to
load, it crashed) stops the others, and this process exits with that process's status (1 when
it died by a signal), so the orchestrator restarts the whole server.

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

BACKLOG = 2048  # pending connections each worker's listening socket holds
POLL_SECONDS = 0.2  # how often the workers are checked while running
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # "<quota> <period>" or "max <period>"
MODEL_PROCESSES = ("per-worker", "shared")  # ABN_MODEL_PROCESS
OWNER_SOCKET_VARIABLE = "ABNSERVE_OWNER_SOCKET"  # set for the front ends of a model owner
OWNER_SOCKET = "model.sock"  # the model owner's socket, in this start's directory
MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path (sun_path) on Linux


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


def bind(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker, all on ``host:port`` (IPv6 when ``host`` is an IPv6
    address); raises OSError when the port is taken, by anyone, this server's kind included."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _socket(family, reuse_port=False) as probe:  # fails if the port is in use
        probe.bind((host, port))
        port = probe.getsockname()[1]  # the port the kernel chose, for port 0
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _socket(family, reuse_port=True)
            sockets.append(sock)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _socket(family: socket.AddressFamily, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


def owner_environment(env: dict[str, str], socket_path: Path) -> dict[str, str]:
    """The workers' environment, made that of the front ends of a model owner on
    ``socket_path``; and the owner's own: every core for its torch threads unless set."""
    env[OWNER_SOCKET_VARIABLE] = str(socket_path)
    owner = dict(env)
    if not os.environ.get("ABN_TORCH_THREADS"):
        owner["ABN_TORCH_THREADS"] = str(usable_cores())
    return owner


class Supervisor:
    """Starts a worker on each of ``sockets`` (and the model owner, given its environment) and
    keeps them until a signal or a failure."""

    def __init__(
        self,
        sockets: list[socket.socket],
        env: dict[str, str],
        owner_env: dict[str, str] | None = None,
    ) -> None:
        self.sockets = sockets
        self.count = len(sockets)
        self.env = env
        self.owner_env = owner_env
        self.owner: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def start(self) -> None:
        if self.owner_env is not None:
            path = self.owner_env[OWNER_SOCKET_VARIABLE]
            command = [sys.executable, "-m", "service.model_owner", "--socket", path]
            self.owner = subprocess.Popen(command, env=self.owner_env)
            log.info("started the model process: pid %d", self.owner.pid)
        for sock in self.sockets:
            if self.stopping:  # a signal came during start-up: start no more
                break
            fd = sock.fileno()
            command = [sys.executable, "-m", "service.worker", "--fd", str(fd)]
            self.workers.append(subprocess.Popen(command, env=self.env, pass_fds=(fd,)))
            # the worker's own now: when it stops listening (drain), the kernel stops sending
            # it connections, rather than queueing them on a copy nobody accepts from
            sock.close()
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
        """Until every worker, then the model owner, has exited; 0 after a signal and clean
        exits."""
        self.start()
        failed: int | None = None
        while any(w.poll() is None for w in self.workers):
            if failed is None and not self.stopping:
                failed = self.failure()
            time.sleep(POLL_SECONDS)
        owner_code = self.stop_owner()
        if failed is not None:
            return failed
        codes = [w.returncode for w in self.workers]
        codes += [] if owner_code is None else [owner_code]
        return 0 if all(c == 0 for c in codes) else next(c if c > 0 else 1 for c in codes if c)

    def failure(self) -> int | None:
        """The status of the first process found exited while serving (the others are then
        stopped), or None while all run."""
        processes = [*([self.owner] if self.owner is not None else []), *self.workers]
        dead = [p for p in processes if p.poll() is not None]
        if not dead:
            return None
        code = dead[0].returncode
        what = "the model process" if dead[0] is self.owner else "worker"
        log.error("%s %d exited with status %d; stopping the server", what, dead[0].pid, code)
        self.signal_workers(signal.SIGTERM)
        return code if code > 0 else 1

    def stop_owner(self) -> int | None:
        """Once every front end is gone: the model owner drains and exits (its status)."""
        if self.owner is None:
            return None
        if self.owner.poll() is None:
            self.owner.send_signal(signal.SIGTERM)
        return self.owner.wait()

    def kill_all(self) -> None:
        """Whatever still runs (nothing, normally)."""
        self.signal_workers(signal.SIGKILL)
        if self.owner is not None and self.owner.poll() is None:
            self.owner.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abn serve (supervisor)")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--model-process", choices=MODEL_PROCESSES, default="per-worker")
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        sockets = bind(args.host, args.port, args.workers)
    except OSError as err:
        print(f"abn serve: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="abn-serve-"))  # this start's; removed at exit
    env = worker_environment(args.workers, run_dir)
    owner_env = None
    if args.model_process == "shared":
        socket_path = run_dir / OWNER_SOCKET
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            print(
                f"abn serve: the model process's socket path {socket_path} is longer than "
                f"{MAX_SOCKET_PATH} bytes; set TMPDIR to a shorter directory",
                file=sys.stderr,
            )
            shutil.rmtree(run_dir, ignore_errors=True)
            return 2
        owner_env = owner_environment(env, socket_path)
    supervisor = Supervisor(sockets, env, owner_env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.on_signal)
    try:
        return supervisor.run()
    finally:
        supervisor.kill_all()
        for sock in sockets:
            sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
