"""The batching engine: a bounded queue, one batcher task, one model thread.

How a request travels::

    route --submit()--> queue (bounded: full -> 429) --batcher--> worker thread --> futures
                                                   \\-- past its deadline: 504, never run

* :meth:`BatchingEngine.submit` is synchronous and never waits: it either appends a job to the
  queue and returns the job's future, or refuses at once (429 queue full, 503 shutting down).
  Shedding load at the door keeps latency bounded; a queue that blocks would only move the
  wait somewhere the client cannot see it.
* The batcher (:meth:`_run`) never waits for requests that may never come (the adaptive rule
  of Triton's and MLServer's batchers): when the model is idle, what is queued runs at once;
  while a batch is in the model, the next one collects what arrives, and closes when it holds
  ``max_batch_size`` jobs, when the model becomes free, or when its *first* job has waited
  ``max_queue_delay_seconds`` (an upper bound, counted from that job's arrival), whichever
  comes first. Under light load every batch is one request and nobody waits; under heavy load
  batches grow by themselves to what arrived during the previous one.
* Jobs whose deadline has passed, or whose client gave up, are dropped before the batch runs.
  Request times (arrival, deadline, queueing) are ``time.monotonic()``, not the loop's clock:
  uvloop caches that per iteration at millisecond resolution, so a job queued and collected
  within one tick would look unexpired however short its deadline.
* Where the batch runs (``inline``): on the event loop itself, between its I/O turns, or in a
  single model thread. Inline (the default on a CPU, ``ABN_BATCH_EXECUTION``) is the lean
  floor's design: one thread per serving process, so no lock is handed between a loop thread
  and a model thread a thousand times per batch, and every core runs one process (issue 19).
  Nothing arrives while an inline batch runs; the requests that came meanwhile wait in their
  sockets, so after waking for a first job the batcher lets the loop turn until the queue stops
  growing (two turns without a new job, the batch full, or the first job's delay up) and runs
  what it has. A model thread keeps the loop answering while a GPU works: there the next batch
  collects while one runs, as described above. Either way one batch uses the model at a time
  (:meth:`ServedModel.infer`, layer by layer, samples grouped by width).
* Results go back through each job's future, on the event loop. A failing batch is answered
  500 (``inference_failed``) for each of its jobs, and a sample whose output is not finite
  (NaN or Inf) is answered 500 alone; either way the log names the request ids, and the
  batcher goes on with the next batch.
* :meth:`drain` stops accepting, lets queued and running jobs finish, then stops the batcher;
  :meth:`abandon_queued` answers what is still queued with 503 when the shutdown grace ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from service.errors import DeadlineExceeded, QueueFull, ServiceError, ShuttingDown
from service.metrics import ServiceMetrics
from service.model import BatchOutput, ServedModel

log = logging.getLogger("service")

TOP_K = 5  # classes each answer ranks (the response's top_k)


class InferenceFailed(ServiceError):
    status_code = 500
    error_type = "inference_failed"


@dataclass(frozen=True)
class Answer:
    """One request's result, in plain Python values but for the probabilities (the route
    does no tensor work)."""

    probabilities: torch.Tensor  # (classes,) float32
    widths: list[int]
    bitops: float
    batch_size: int
    top_labels: list[int]  # the TOP_K most probable classes, most probable first
    top_probabilities: list[float]
    first_pass_widths: list[int] | None  # when the policy re-ran later layers: the first pass


@dataclass(frozen=True)
class _BatchResults:
    """A batch's outputs as the event loop needs them, made in the model thread."""

    probabilities: torch.Tensor  # (N, classes)
    widths: list[list[int]]
    bitops: list[float]
    finite: list[bool]  # per sample: probabilities and cost are finite
    top_labels: list[list[int]]
    top_probabilities: list[list[float]]
    first_pass: list[list[int] | None]


@dataclass
class _Job:
    image: torch.Tensor  # (C, H, W) uint8
    budget: float
    pinned: list[int] | None
    deadline: float  # time.monotonic()
    enqueued: float  # time.monotonic()
    future: asyncio.Future[Answer]
    request_id: str = ""
    sole_image: bool = False  # its request's only image: its widths are counted when answered


class Admission:
    """The door of an engine, this one or a front end's to the model process
    (:class:`service.owner_client.OwnerEngine`): open once started, shut by
    :meth:`stop_accepting` (drain, shutdown) and never reopened."""

    _accepting = False
    # Counts the widths of answered images whose request has no other image, as the answers
    # are handed out, before any of their routes can respond: once per batch of answers rather
    # than once per image (ServiceMetrics.widths_chosen). A request of several images is
    # counted by its route once all are answered, since one failing fails them all.
    count_widths: Callable[[list[list[int]]], None] | None = None

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        """New submissions get 503 from now on; safe to call from a signal handler."""
        self._accepting = False


class BatchingEngine(Admission):
    """Batches concurrent requests for one :class:`ServedModel`."""

    def __init__(
        self,
        model: ServedModel,
        *,
        max_batch_size: int,
        max_queue_delay_seconds: float,
        max_queue_size: int,
        metrics: ServiceMetrics | None = None,
        inline: bool = False,
    ) -> None:
        self.model = model
        self.inline = inline  # run batches on the event loop, not in the model thread
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_seconds
        self.max_queue_size = max_queue_size
        self.metrics = metrics
        self._queue: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abn-model")
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._held = 0  # jobs collected for the next batch, waiting for the model to be free
        self._running = 0  # jobs in the batch now in the model
        self._batch_seconds = 0.01  # moving average, for Retry-After

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._accepting = True
        batcher = self._run_inline() if self.inline else self._run()
        self._task = asyncio.get_running_loop().create_task(batcher, name="abn-batcher")

    @property
    def queued(self) -> int:
        """Jobs accepted and not yet in the model: in the queue or collected for the next batch."""
        return len(self._queue) + self._held

    @property
    def busy(self) -> bool:
        return self.queued > 0 or self._running > 0

    async def drain(self, timeout: float) -> None:
        """Stop accepting, finish what was accepted (up to ``timeout``), stop the batcher."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.busy and loop.time() < end and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        while self._queue:  # only left when the grace ran out
            self._finish(self._queue.popleft(), ShuttingDown("the server shut down first"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    def abandon_queued(self, reason: str) -> int:
        """Answer every job still waiting with 503 now, and accept no more; returns how many.

        For the end of the shutdown grace: the HTTP server is about to cancel the requests
        still open; answered now, queued requests get a proper 503 while their connections are
        still there. The batch already in the model (milliseconds) finishes normally."""
        self.stop_accepting()
        abandoned = 0
        while self._queue:
            self._finish(self._queue.popleft(), ShuttingDown(reason))
            abandoned += 1
        return abandoned

    # -- submitting -------------------------------------------------------------------------
    def submit(
        self,
        image: torch.Tensor,
        budget: float,
        pinned: Sequence[int] | None,
        deadline: float,
        request_id: str = "",
        sole_image: bool = False,
    ) -> asyncio.Future[Answer]:
        """Queue one image; raise 503/429 at once instead of waiting for room. ``request_id``
        is only for the log, should the model fail on it; ``sole_image``: its request has no
        other image (see :attr:`count_widths`)."""
        if not self._accepting:
            raise ShuttingDown()
        if self.queued >= self.max_queue_size:
            raise QueueFull(
                f"the queue is full ({self.max_queue_size} requests waiting); retry later",
                self.retry_after_seconds(),
            )
        loop = asyncio.get_running_loop()
        job = _Job(
            image,
            float(budget),
            None if pinned is None else list(pinned),
            deadline,
            time.monotonic(),
            loop.create_future(),
            request_id,
            sole_image,
        )
        self._queue.append(job)
        if self.metrics is not None:
            self.metrics.pending.inc()
        self._wakeup.set()
        return job.future

    def retry_after_seconds(self) -> int:
        """Whole seconds until the queue has likely drained (at least 1)."""
        batches = self.queued / self.max_batch_size + 1
        return max(1, math.ceil(batches * (self._batch_seconds + self.max_queue_delay)))

    # -- the batcher ------------------------------------------------------------------------
    async def _run(self) -> None:
        in_model: asyncio.Task[None] | None = None  # the batch the model is running
        batch: list[_Job] = []  # the next batch, collected while that one runs
        try:
            while True:
                batch = await self._collect(in_model)
                self._held = len(batch)
                if in_model is not None:
                    await in_model  # one batch in the model at a time
                live, batch, self._held = self._drop_expired(batch), [], 0
                in_model = None
                if live:
                    in_model = asyncio.get_running_loop().create_task(
                        self._execute(live), name="abn-batch"
                    )
        finally:  # stopped (drain's grace ran out): nothing collected is left unanswered
            if in_model is not None:
                in_model.cancel()
            for job in batch:
                self._finish(job, ShuttingDown("the server shut down first"))
            self._held = 0

    async def _run_inline(self) -> None:
        """The batcher when batches run on the loop: gather what has arrived, run it, repeat.
        Nothing is held between the queue and the model across an await (the batch runs
        without yielding), so a stop leaves only the queue, which :meth:`drain` answers."""
        while True:
            await self._await_first_job()
            await self._let_arrivals_join()
            size = min(len(self._queue), self.max_batch_size)
            live = self._drop_expired([self._queue.popleft() for _ in range(size)])
            if live:
                await self._execute(live)

    async def _await_first_job(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _let_arrivals_join(self) -> None:
        """Turn the loop until no new job comes in two turns (a request read in one turn is
        queued by its route in the next), the batch is full, or the first job's delay is up.
        An idle server answers a lone request after these two turns: microseconds."""
        close_at = self._queue[0].enqueued + self.max_queue_delay
        while len(self._queue) < self.max_batch_size and time.monotonic() < close_at:
            before = len(self._queue)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if len(self._queue) == before:
                return

    async def _collect(self, in_model: asyncio.Task[None] | None) -> list[_Job]:
        """Wait for a first job; then take what is queued, at once when the model is idle, or
        when the model becomes free, the batch is full or its first job's delay is up."""
        loop = asyncio.get_running_loop()
        await self._await_first_job()
        close_at = self._queue[0].enqueued + self.max_queue_delay
        while (
            in_model is not None and not in_model.done() and len(self._queue) < self.max_batch_size
        ):
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            arrival = loop.create_task(self._wakeup.wait())
            await asyncio.wait(
                (arrival, in_model), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            arrival.cancel()
        size = min(len(self._queue), self.max_batch_size)
        return [self._queue.popleft() for _ in range(size)]

    def _drop_expired(self, batch: list[_Job]) -> list[_Job]:
        """Jobs worth running: not abandoned by their client and not past their deadline."""
        now = time.monotonic()
        live = []
        for job in batch:
            if job.future.done():  # the route gave up (deadline, disconnect)
                self._finish(job, None)
            elif now >= job.deadline:
                self._finish(
                    job,
                    DeadlineExceeded(
                        f"the request waited {now - job.enqueued:.3f}s in the queue, past its "
                        f"deadline; it was not run"
                    ),
                )
            else:
                live.append(job)
        return live

    async def _execute(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        if self.metrics is not None:
            for job in jobs:
                self.metrics.queue_duration.observe(started - job.enqueued)
        self._running = len(jobs)
        clock = time.perf_counter()
        try:
            inputs = (
                [job.image for job in jobs],
                [job.budget for job in jobs],
                [job.pinned for job in jobs],
            )
            if self.inline:
                out = self._infer(*inputs)
            else:
                out = await loop.run_in_executor(self._executor, self._infer, *inputs)
        except Exception as err:  # a failing batch must not kill the batcher
            log.exception(
                "inference failed for a batch of %d (request ids: %s)",
                len(jobs),
                " ".join(job.request_id for job in jobs),
            )
            for job in jobs:
                self._finish(job, InferenceFailed(f"inference failed: {type(err).__name__}"))
            return
        finally:
            self._running = 0
        seconds = time.perf_counter() - clock
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        if self.metrics is not None:
            self.metrics.batch_done(len(jobs), seconds)
        if not all(out.finite):
            log.error(
                "the model produced non-finite outputs (NaN or Inf) in a batch of %d "
                "(request ids: %s)",
                len(jobs),
                " ".join(
                    job.request_id for job, ok in zip(jobs, out.finite, strict=True) if not ok
                ),
            )
        counted: list[list[int]] = []
        for i, job in enumerate(jobs):
            if out.finite[i]:
                answer = Answer(
                    out.probabilities[i],
                    out.widths[i],
                    out.bitops[i],
                    len(jobs),
                    out.top_labels[i],
                    out.top_probabilities[i],
                    out.first_pass[i],
                )
                if job.sole_image and not job.future.done():  # its route will answer it
                    counted.append(answer.widths)
                self._finish(job, answer)
            else:
                self._finish(
                    job,
                    InferenceFailed(
                        "inference failed: the model's output for this image is NaN or infinite"
                    ),
                )
        if counted and self.count_widths is not None:  # before any of their routes resumes
            self.count_widths(counted)

    def _infer(
        self, images: list[torch.Tensor], budgets: list[float], pins: list[list[int] | None]
    ) -> _BatchResults:
        """Build the batch, run it, and turn its outputs into what the event loop hands out:
        all tensor work in the model thread, once per batch, so the event loop does none.
        Also whether each sample's outputs are finite: a NaN would otherwise become a 500 at
        JSON encoding, after the metrics had counted it served."""
        pinned = None
        if any(p is not None for p in pins):
            zeros = [0] * self.model.num_layers  # a row of zeros: the policy decides
            pinned = torch.tensor([p or zeros for p in pins], dtype=torch.long)
        out: BatchOutput = self.model.infer(
            torch.stack(images), torch.tensor(budgets, dtype=torch.float64), pinned
        )
        probabilities = out.probabilities
        bitops = out.bitops.tolist()
        # a row's sum is finite exactly when all its probabilities are (each is in [0, 1]):
        # one op and a check per sample, not four ops of their own
        sums = probabilities.sum(dim=1).tolist()
        finite = [math.isfinite(p) and math.isfinite(c) for p, c in zip(sums, bitops, strict=True)]
        top = probabilities.topk(min(TOP_K, probabilities.shape[1]), dim=1)
        first_pass: list[list[int] | None] = [None] * len(images)
        if out.first_pass is not None and out.reran is not None:
            rows = zip(out.first_pass.tolist(), out.reran.tolist(), strict=True)
            first_pass = [row if reran else None for row, reran in rows]
        return _BatchResults(
            probabilities,
            out.widths.tolist(),
            bitops,
            finite,
            top.indices.tolist(),
            top.values.tolist(),
            first_pass,
        )

    def _finish(self, job: _Job, outcome: Answer | BaseException | None) -> None:
        """Settle a job's future (unless its route already gave up) and count it done."""
        if self.metrics is not None:
            self.metrics.pending.dec()
        if job.future.done() or outcome is None:
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
