"""Running the app under uvicorn: ``abn serve``.

``ABN_WORKERS`` serving processes (default: one per core on CPU, one on CUDA), each owning a
model copy and its batching engine (``ABN_MODEL_PROCESS=per-worker``), or each a front end of
one model process that owns the only copy (``shared``). With one process that owns its model,
this process serves; otherwise it checks the settings and the model and replaces itself with
:mod:`service.supervisor`, which binds the port and starts the workers (:mod:`service.worker`),
each running :func:`serve_one` on the shared socket, and the model process
(:mod:`service.model_owner`) when shared. Everything below holds per worker.

SIGTERM / SIGINT: readiness goes 503 and new requests are refused with 503 at once (from the
signal handler, before uvicorn starts its own shutdown); after ``ABN_SHUTDOWN_DELAY_SECONDS``
(default 0: at once) uvicorn closes the listener, waits for in-flight requests (queued ones
included) up to ``ABN_SHUTDOWN_TIMEOUT_SECONDS``, and the lifespan drains the engine. The
process then exits with status 0. A second signal during the delay ends the delay. Requests
still queued when that grace is about to run out are answered 503 (``shutting_down``) rather
than cut off; one still open when it has run out is answered 503 by the middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import torch
import uvicorn
from pydantic import ValidationError

from abn.errors import ModelIntegrityError
from abn.store import open_model_dir
from service.app import create_app
from service.connections import GuardedHttpToolsProtocol
from service.logs import configure_logging
from service.settings import Settings, setting_variables, unknown_variables
from service.supervisor import usable_cores


class DrainingServer(uvicorn.Server):
    """A uvicorn server that flips the app to draining the moment a signal arrives."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_signal: Callable[[], None],
        delay_seconds: float = 0.0,
        on_grace_ending: Callable[[], None] | None = None,
        grace_seconds: float | None = None,
    ) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._delay = delay_seconds
        self._exit_at: float | None = None
        self._on_grace_ending = on_grace_ending
        self._grace = grace_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not super(): uvicorn would re-raise the signal after a clean shutdown, turning a
        # graceful drain into a death by SIGTERM (exit status 143).
        self._on_signal()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl+C: stop waiting
        elif self._exit_at is None and self._delay > 0:
            self._exit_at = time.monotonic() + self._delay  # on_tick ends the delay
        else:
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, plus a call to ``on_grace_ending`` shortly before its grace for
        in-flight requests runs out. uvicorn then cancels what is still open, and a cancelled
        request would be answered with a plain-text 500; this way queued requests get the
        contract's 503 (``shutting_down``) while their connections are still open."""
        handle = None
        if self._on_grace_ending is not None and self._grace is not None:
            margin = min(0.5, self._grace / 4)
            handle = asyncio.get_running_loop().call_later(
                max(0.0, self._grace - margin), self._on_grace_ending
            )
        try:
            await super().shutdown(sockets)
        finally:
            if handle is not None:
                handle.cancel()

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


# File descriptors the process needs beside its connections: the model, logs, sockets of its own.
SPARE_FILES = 256


def check_open_file_limit(connections: int) -> None:
    """Raise the soft open-file limit towards the hard one when the connection cap needs it,
    and warn when even that is too low: past it, accept() fails and every client suffers, where
    the cap would have answered the excess 503."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to check
        return
    needed = connections + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        logging.getLogger("service").warning(
            "the open-file limit (%d) is below ABN_LIMIT_CONCURRENCY + %d (%d): lower "
            "ABN_LIMIT_CONCURRENCY or raise ulimit -n",
            soft,
            SPARE_FILES,
            needed,
        )


def worker_count(settings: Settings) -> int:
    """``ABN_WORKERS``, or its default: one per usable core on CPU (affinity and container
    CPU limit, :func:`usable_cores`), one on CUDA (one model copy per GPU front end would
    multiply its memory; see :mod:`service.supervisor`) unless one model process serves them
    all (``ABN_MODEL_PROCESS=shared``: front ends hold no model, one per core again)."""
    if settings.workers is not None:
        return settings.workers
    if settings.model_process == "shared":
        return usable_cores()
    if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
        return 1
    return usable_cores()


def serve(settings: Settings) -> int:
    """Serve until a signal; 0 after a graceful shutdown, 1 when the model failed to load."""
    configure_logging(settings.log_format, settings.log_level)
    try:
        open_model_dir(settings.model_dir)  # a clear error before binding the port
    except ModelIntegrityError as err:
        print(f"abn serve: cannot serve {settings.model_dir}: {err}", file=sys.stderr)
        return 2
    count = worker_count(settings)
    if count > 1 or settings.model_process == "shared":
        exec_supervisor(settings, count)
    return serve_one(settings)


def exec_supervisor(settings: Settings, count: int) -> None:
    """Become the supervisor of ``count`` workers, and of the model process when shared (this
    process's torch and imports go); the settings as resolved here (command-line options
    included) reach them through the environment."""
    env = dict(os.environ)
    env.update(ABN_MODEL_DIR=str(settings.model_dir), ABN_HOST=settings.host)
    env["ABN_PORT"] = str(settings.port)
    argv = [sys.executable, "-m", "service.supervisor", "--host", settings.host]
    argv += ["--port", str(settings.port), "--workers", str(count)]
    argv += ["--model-process", settings.model_process]
    argv += ["--log-format", settings.log_format, "--log-level", settings.log_level]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def serve_one(settings: Settings, sock: socket.socket | None = None) -> int:
    """One serving process, on ``sock`` when given (a worker), else on the settings' port."""
    fatal: list[str] = []
    server: DrainingServer | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        lifespan="on",
        log_level=settings.log_level,
        # The middleware writes the access line (route, budget, BitOps: uvicorn knows neither),
        # and uvicorn's loggers propagate to the one handler of configure_logging().
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds + 0.999),
        # The header deadline, request buffering and the concurrency cap
        # (service/connections.py); uvicorn's own limit_concurrency stays unset because the
        # protocol applies it, answering in JSON.
        http=GuardedHttpToolsProtocol.configured(
            settings.header_timeout_seconds,
            settings.body_timeout_seconds,
            settings.max_body_bytes,
            settings.limit_concurrency,
        ),
    )
    check_open_file_limit(settings.limit_concurrency)
    server = DrainingServer(
        config,
        on_signal=app.state.service.begin_draining,
        delay_seconds=settings.shutdown_delay_seconds,
        on_grace_ending=app.state.service.abandon_queued,
        grace_seconds=settings.shutdown_timeout_seconds,
    )
    server.run(sockets=None if sock is None else [sock])
    if fatal:
        print(f"abn serve: the model could not be served: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def run_from_cli(model: Path | None, host: str | None, port: int | None) -> int:
    """``abn serve``: command-line options override ``ABN_*`` settings; an ``ABN_*`` variable
    that names no setting is an error (exit 2), not a default silently kept."""
    unknown = unknown_variables(os.environ)
    if unknown:
        print(
            f"abn serve: unknown settings in the environment: {', '.join(unknown)}; the "
            f"settings are {', '.join(setting_variables())}",
            file=sys.stderr,
        )
        return 2
    overrides = {
        k: v for k, v in (("model_dir", model), ("host", host), ("port", port)) if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        problems = "; ".join(
            f"ABN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in err.errors()
        )
        print(f"abn serve: invalid settings: {problems}", file=sys.stderr)
        return 2
    return serve(settings)
