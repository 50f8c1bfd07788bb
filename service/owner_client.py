"""A front end's engine when one model process serves all (``ABN_MODEL_PROCESS=shared``).

:class:`OwnerEngine` has the interface the routes and :class:`~service.state.ServiceState` use
of :class:`~service.engine.BatchingEngine` (``submit`` returning a future, ``accepting``,
``stop_accepting``, ``queued``/``busy``, ``drain``, ``abandon_queued``), so the routes do not
know which mode serves them; each job goes over the front end's one Unix-socket connection to
the owner (:mod:`service.model_owner`, frames of :mod:`service.owner_wire`), whose real
:class:`BatchingEngine` batches the jobs of every front end. Its answer, or its refusal (429
with the owner's Retry-After, 503, 504, 500), settles the job's future, so a request is
answered exactly as in a single process. A job whose request gave up (deadline, client gone,
another image of it failed) is cancelled at the owner too, which then drops it before the
model runs it.

The owner accepts connections only once its model is loaded and warmed up, and speaks first
with the model's facts (:mod:`service.owner_facts`): a front end with its connection up is
ready. Losing the connection while serving (the owner died) answers every job in flight 503
and reports the loss, for the process to stop (:mod:`service.supervisor` stops the server).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import torch

from service.engine import Admission, Answer
from service.errors import ShuttingDown
from service.owner_facts import OwnerModel
from service.owner_wire import (
    ERROR,
    FACTS,
    RESULT,
    Job,
    WireError,
    decode_error,
    decode_result,
    encode_cancel,
    encode_job,
    split_frames,
)

log = logging.getLogger("service")

CONNECT_RETRY_SECONDS = 0.05  # while the owner loads its model, its socket is not there yet
GONE = "the model process is gone; retry on another instance"


class OwnerEngine(Admission, asyncio.Protocol):
    """One front end's link to the model owner, used as its batching engine."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        self.facts: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._jobs: dict[int, asyncio.Future[Answer]] = {}
        self._sole_images: set[int] = set()  # jobs whose widths are counted here when answered
        self._ids = itertools.count(1)
        self._accepting = False
        self._closing = False  # drain closed the link: its loss is no news

    # -- the connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        counted: list[list[int]] = []
        try:
            for kind, payload in split_frames(self._buffer):
                self._on_frame(kind, payload, counted)
        except WireError as err:
            log.error("the model process sent an unreadable frame (%s); closing the link", err)
            assert self._transport is not None
            self._transport.close()
        if counted and self.count_widths is not None:  # before any of their routes resumes
            self.count_widths(counted)

    def _on_frame(self, kind: int, payload: bytes, counted: list[list[int]]) -> None:
        """Settle a job by the owner's frame; an answered sole image's widths go to
        ``counted`` (:attr:`~service.engine.Admission.count_widths`)."""
        if kind == FACTS:
            if not self.facts.done():
                self.facts.set_result(payload)
            return
        if kind == RESULT:
            job_id, answer = decode_result(payload)
            future = self._jobs.pop(job_id, None)
            if future is not None and not future.done():
                if job_id in self._sole_images:
                    counted.append(answer.widths)
                future.set_result(answer)
        elif kind == ERROR:
            job_id, error = decode_error(payload)
            future = self._jobs.pop(job_id, None)
            if future is not None and not future.done():
                future.set_exception(error)
        else:
            raise WireError(f"a frame of kind {kind} from the model process")

    def connection_lost(self, exc: Exception | None) -> None:
        self._accepting = False
        if not self.facts.done():
            self.facts.set_exception(ConnectionError("the model process closed the connection"))
        jobs, self._jobs = self._jobs, {}
        for future in jobs.values():
            if not future.done():
                future.set_exception(ShuttingDown(GONE))
        if not self._closing:
            self._on_lost("the connection to the model process was lost")

    # -- the engine's interface -------------------------------------------------------------
    def start(self) -> None:
        self._accepting = self._transport is not None and not self._transport.is_closing()

    @property
    def queued(self) -> int:
        """Jobs sent to the owner and not answered yet (queued or running there)."""
        return len(self._jobs)

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def submit(
        self,
        image: torch.Tensor,
        budget: float,
        pinned: Sequence[int] | None,
        deadline: float,
        request_id: str = "",
        sole_image: bool = False,
    ) -> asyncio.Future[Answer]:
        """Send one image to the owner; its answer or refusal settles the future.
        ``sole_image`` as :meth:`service.engine.BatchingEngine.submit`'s."""
        if not self._accepting or self._transport is None:
            raise ShuttingDown()
        job_id = next(self._ids)
        pins = None if pinned is None else list(pinned)
        left = deadline - time.monotonic()
        self._transport.write(encode_job(Job(job_id, image, float(budget), pins, left, request_id)))
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._jobs[job_id] = future
        if sole_image:
            self._sole_images.add(job_id)
        future.add_done_callback(partial(self._settled, job_id))
        return future

    def _settled(self, job_id: int, future: asyncio.Future[Answer]) -> None:
        """A future settled (by the owner, or here because its request gave up: then it is
        cancelled there too)."""
        self._sole_images.discard(job_id)
        transport = self._transport
        if self._jobs.pop(job_id, None) is not None and transport and not transport.is_closing():
            transport.write(encode_cancel(job_id))

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait for the owner's answers (up to ``timeout``), close the link."""
        self.stop_accepting()
        end = time.monotonic() + timeout
        while self._jobs and time.monotonic() < end:
            await asyncio.sleep(0.01)
        self.abandon_queued("the server shut down first")
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abandon_queued(self, reason: str) -> int:
        """Answer every job still unanswered with 503 now (and cancel it at the owner), and
        accept no more; returns how many. The front end cannot tell a job queued at the owner
        from one in its batch, so both are answered here."""
        self.stop_accepting()
        jobs, self._jobs = self._jobs, {}
        for job_id, future in jobs.items():
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(encode_cancel(job_id))
            if not future.done():
                future.set_exception(ShuttingDown(reason))
        return len(jobs)


async def connect_owner(
    path: str, on_lost: Callable[[str], None]
) -> tuple[OwnerModel, OwnerEngine]:
    """Connect to the owner's socket once it is there (the owner binds it when its model is
    ready: until then this waits), and read the model's facts."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            _, engine = await loop.create_unix_connection(lambda: OwnerEngine(on_lost), path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(CONNECT_RETRY_SECONDS)
    return OwnerModel(await engine.facts), engine
