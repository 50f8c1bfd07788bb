"""Start and stop a real ``abn serve`` for benchmarks and soak runs, and read its memory.

The benchmark measures the server exactly as users run it: its own process (so its resident
memory is its own, read from ``/proc/<pid>/status``), on a free port, settings passed as
``ABN_*`` environment variables, stopped with SIGTERM like any deployment. The tests' real-process
servers (``tests/service/helpers.py``) are this class too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from loadtest.machine import proc_status_kib


def setting_variable(name: str) -> str:
    """The environment variable of a setting given as ``torch_threads``, ``TORCH_THREADS`` or
    ``ABN_TORCH_THREADS`` (all three mean the same; the last must not become ``ABN_ABN_...``)."""
    upper = name.strip().upper()
    return upper if upper.startswith("ABN_") else f"ABN_{upper}"


def parse_settings(items: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` options as ``{ABN_NAME: VALUE}``; a name the server does not know
    makes it refuse to start (``abn serve`` checks every ``ABN_*`` variable), so a typo fails
    the run at once instead of leaving a default silently in force."""
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. torch_threads=1")
        settings[setting_variable(name)] = value
    return settings


def free_port() -> int:
    """A TCP port of 127.0.0.1 free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def abn_command() -> list[str]:
    """The ``abn`` console script next to this interpreter, else ``python -m commands.abn``."""
    script = Path(sys.executable).parent / "abn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "commands.abn"]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


class ManagedServer:
    """``abn serve --model DIR`` on a free port of 127.0.0.1 with ``ABN_<NAME>`` settings.

    Use as a context manager: it starts, waits for ``/readyz`` and stops (SIGTERM, then kill)
    on exit. ``peak_rss_mib``/``rss_mib`` read ``VmHWM``/``VmRSS`` of the server process.
    The server runs in its own session, so whatever processes it starts are one process group:
    after the server has stopped, any of them left behind is killed with it.
    """

    ready_path = "/readyz"
    cwd: Path | None = None  # where the server runs (its workers import from there first)
    command_prefix: Sequence[str] = ()  # e.g. taskset -c 0: what it runs under
    signal_group = False  # SIGTERM the server alone: its own drain takes care of its children

    def __init__(self, model_dir: Path, log_path: Path, **settings: object) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.settings = {k: str(v) for k, v in settings.items()}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [*abn_command(), "serve", "--model", str(self.model_dir)]
        return [*cmd, "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABN_")}
        env["ABN_LOG_LEVEL"] = "warning"
        env.update({setting_variable(k): v for k, v in self.settings.items()})
        return env

    def start(self, ready_timeout: float = 180.0) -> ManagedServer:
        self.launch()
        self.wait_ready(ready_timeout)
        return self

    def launch(self) -> None:
        """Start the process and return at once (:meth:`wait_ready` waits for it)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.command_prefix, *self.command()],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
            )

    def wait_ready(self, timeout: float = 180.0) -> list[int]:
        """Poll the ready path until 200; the statuses seen on the way (a test checks that
        readiness said 503, never 200 too early). Stops the server if it is not ready in time."""
        assert self.proc is not None, "not launched"
        seen: list[int] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.check_alive()
            try:
                seen.append(httpx.get(self.url + self.ready_path, timeout=2.0).status_code)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if seen[-1] == 200:
                return seen
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        """Raise, with the end of its log, if the server has exited."""
        assert self.proc is not None, "not launched"
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    @property
    def name(self) -> str:
        return "abn serve"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def rss_mib(self) -> float | None:
        kib = proc_status_kib(self.pid, "VmRSS")
        return None if kib is None else kib / 1024.0

    def peak_rss_mib(self) -> float | None:
        kib = proc_status_kib(self.pid, "VmHWM")
        return None if kib is None else kib / 1024.0

    def log(self) -> str:
        """Everything the server wrote so far (empty if its log cannot be read)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if self.signal_group:
                _signal_group(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _signal_group(self.proc.pid, signal.SIGKILL)  # whatever it left behind
        return self.proc.returncode

    def __enter__(self) -> ManagedServer:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
