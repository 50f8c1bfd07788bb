"""The one process that owns the model when ``ABN_MODEL_PROCESS=shared``: started by
:mod:`service.supervisor` beside the front ends, it loads and warms the model, runs the real
:class:`~service.engine.BatchingEngine`, and serves the front ends' jobs over a Unix socket
(frames of :mod:`service.owner_wire`).

Why: on a GPU one copy of the model must serve every front end (a copy per worker multiplies
its memory, and batches from several front ends fill the device better than small ones from
each). The batching, the deadlines and the shedding are those of one server: jobs from every
front end wait in this one bounded queue (full: 429 with its Retry-After), a job past its
deadline is answered 504 without running, and a batch holds jobs of several front ends.

Its engine metrics (batch sizes, queue and inference durations, pending) are written to the
server's ``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics`` from any front end shows them once.

Start-up: the socket is bound only once the model is ready, so a front end's connection being
up means the model is ready. A model that fails to load exits with status 1 and the reason on
stderr; the supervisor then stops the server with that status.

SIGTERM/SIGINT: the front ends drain first (they still need this process for the requests
they hold), so it keeps answering their jobs until every front end has closed its connection
(or ``ABN_SHUTDOWN_DELAY_SECONDS`` + ``ABN_SHUTDOWN_TIMEOUT_SECONDS`` and a margin have
passed), then drains its engine and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import cast

import torch
import uvloop

from service.engine import Answer, BatchingEngine, InferenceFailed
from service.errors import ServiceError
from service.logs import configure_logging
from service.metrics import ServiceMetrics
from service.multiprocess_metrics import multiprocess_dir
from service.owner_facts import model_facts
from service.owner_wire import (
    CANCEL,
    FACTS,
    JOB,
    WireError,
    decode_cancel,
    decode_job,
    encode_error,
    encode_result,
    frame,
    split_frames,
)
from service.settings import Settings, runs_inline
from service.state import load_from_settings

log = logging.getLogger("service")

STOP_MARGIN_SECONDS = 5.0  # beyond the front ends' own grace, before it stops waiting on them


class FrontEndLink(asyncio.Protocol):
    """One front end's connection: its jobs into the engine, their answers back."""

    def __init__(self, engine: BatchingEngine, facts: bytes, links: set[FrontEndLink]) -> None:
        self.engine = engine
        self.facts = facts
        self.links = links
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.jobs: dict[int, asyncio.Future[Answer]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.links.add(self)
        self.transport.write(frame(FACTS, self.facts))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            for kind, payload in split_frames(self.buffer):
                if kind == JOB:
                    self._submit(payload)
                elif kind == CANCEL:
                    future = self.jobs.get(decode_cancel(payload))
                    if future is not None:
                        future.cancel()  # the engine drops it before it runs
                else:
                    raise WireError(f"a frame of kind {kind} from a front end")
        except WireError as err:
            log.error("a front end sent an unreadable frame (%s); closing its link", err)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.links.discard(self)
        for future in self.jobs.values():
            future.cancel()  # nobody is left to answer
        self.jobs.clear()

    def _submit(self, payload: bytes) -> None:
        job = decode_job(payload)
        try:
            future = self.engine.submit(
                job.image,
                job.budget,
                job.pinned,
                time.monotonic() + job.seconds_left,
                job.request_id,
            )
        except ServiceError as err:  # 429 or 503, at once
            self._send(encode_error(job.job_id, err))
            return
        self.jobs[job.job_id] = future
        future.add_done_callback(partial(self._answer, job.job_id))

    def _answer(self, job_id: int, future: asyncio.Future[Answer]) -> None:
        self.jobs.pop(job_id, None)
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._send(encode_result(job_id, future.result()))
        elif isinstance(error, ServiceError):
            self._send(encode_error(job_id, error))
        else:
            self._send(encode_error(job_id, InferenceFailed(f"inference failed: {error!r}")))

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def own_model(settings: Settings, socket_path: str) -> int:
    """Load, serve the front ends on ``socket_path`` until a signal and their departure, drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    try:
        model = await asyncio.to_thread(load_from_settings, settings)
        await asyncio.to_thread(model.warm_up, settings.max_batch_size)
    except Exception as err:  # any failure to load is the reason to report
        print(f"abn serve: the model could not be served: {err}", file=sys.stderr)
        return 1
    if stop.is_set():
        return 0
    metrics = ServiceMetrics(
        settings.max_batch_size,
        deprecated_names=settings.deprecated_metrics,
        multiprocess_dir=multiprocess_dir(),
    )
    engine = BatchingEngine(
        model,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_seconds=settings.max_queue_delay_seconds,
        max_queue_size=settings.max_queue_size,
        metrics=metrics,
        inline=runs_inline(settings.batch_execution, model.device.type),
    )
    engine.start()
    links: set[FrontEndLink] = set()
    facts = model_facts(model)
    server = await loop.create_unix_server(lambda: FrontEndLink(engine, facts, links), socket_path)
    gc.collect()
    gc.freeze()  # as in a single server (service/state.py): no full collections under load
    log.info("model process ready: %s %s on %s", model.name, model.version, model.device)
    await stop.wait()
    server.close()  # no new front ends; those connected still send what they hold
    grace = settings.shutdown_delay_seconds + settings.shutdown_timeout_seconds
    end = time.monotonic() + grace + STOP_MARGIN_SECONDS
    while links and time.monotonic() < end:
        await asyncio.sleep(0.02)
    await engine.drain(settings.shutdown_timeout_seconds)
    for link in list(links):
        assert link.transport is not None
        link.transport.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abn serve (model process)")
    parser.add_argument("--socket", required=True, help="the Unix socket the front ends use")
    args = parser.parse_args(argv)
    settings = Settings()  # checked by abn serve before the supervisor started
    configure_logging(settings.log_format, settings.log_level)
    return uvloop.run(own_model(settings, args.socket))  # uvicorn's loop in the front ends too


if __name__ == "__main__":
    sys.exit(main())
