"""The batching engine: batches fill and close on time, expired jobs never run, a full queue
refuses at once, drain finishes what was accepted, and a batch answers like single images."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
import torch

from service.engine import Answer, BatchingEngine
from service.errors import DeadlineExceeded, QueueFull, ShuttingDown
from service.model import BatchOutput, ServedModel

from .helpers import fmnist_like

pytestmark = pytest.mark.timeout(120)  # a hang fails fast, not after 10 minutes


class FakeModel:
    """Records batch sizes; ``gate`` (when set) holds each batch until released."""

    num_layers = 3

    def __init__(self, seconds: float = 0.0, gate: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.gate = gate
        self.batches: list[list[float]] = []
        self.fail_next = False

    def infer(self, images: torch.Tensor, budgets: torch.Tensor, pinned: object) -> BatchOutput:
        self.batches.append(budgets.tolist())
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.seconds)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        n = images.shape[0]
        return BatchOutput(
            torch.full((n, 10), 0.1), torch.full((n, 3), 4, dtype=torch.long), budgets.double()
        )


def engine_for(model: object, **kw: object) -> BatchingEngine:
    opts = {"max_batch_size": 4, "max_queue_delay_seconds": 0.0, "max_queue_size": 100} | kw
    return BatchingEngine(model, **opts)  # type: ignore[arg-type]


IMAGE = torch.zeros(1, 28, 28, dtype=torch.uint8)


def far() -> float:
    return time.monotonic() + 30  # deadlines are on the request clock, time.monotonic()


def test_batches_fill_up_to_the_maximum() -> None:
    async def body() -> None:
        model = FakeModel()
        engine = engine_for(model, max_queue_delay_seconds=0.2)
        engine.start()
        futures = [engine.submit(IMAGE, float(i + 1), None, far()) for i in range(10)]
        answers = await asyncio.gather(*futures)
        assert [len(b) for b in model.batches] == [4, 4, 2]
        assert [a.bitops for a in answers] == [float(i + 1) for i in range(10)]  # order kept
        await engine.drain(5)

    asyncio.run(body())


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (bounded by the module's timeout)."""
    while not condition():
        await asyncio.sleep(0.001)


def test_an_idle_model_runs_a_lone_request_at_once() -> None:
    """No wait for a batch that never comes: with an hour of allowed queue delay, a request
    that finds the model idle is answered (the bound of 60 s only catches a batcher that
    waited for the delay)."""

    async def body() -> None:
        model = FakeModel()
        engine = engine_for(model, max_queue_delay_seconds=3600, max_batch_size=32)
        engine.start()
        for budget in (1.0, 2.0):
            answer = await asyncio.wait_for(engine.submit(IMAGE, budget, None, far()), 60)
            assert answer.batch_size == 1
        assert model.batches == [[1.0], [2.0]]
        await engine.drain(5)

    asyncio.run(body())


class ThreadRecordingModel(FakeModel):
    """A :class:`FakeModel` that also records which thread ran each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def infer(self, images: torch.Tensor, budgets: torch.Tensor, pinned: object) -> BatchOutput:
        self.threads.append(threading.get_ident())
        return super().infer(images, budgets, pinned)


def test_inline_batches_run_on_the_event_loop_and_a_lone_request_waits_for_nothing() -> None:
    """ABN_BATCH_EXECUTION=inline: the batch runs in the loop's own thread, and an idle engine
    answers a lone request at once (an hour of allowed delay is never waited)."""

    async def body() -> None:
        model = ThreadRecordingModel()
        engine = engine_for(model, max_queue_delay_seconds=3600, max_batch_size=32, inline=True)
        engine.start()
        for budget in (1.0, 2.0):
            answer = await asyncio.wait_for(engine.submit(IMAGE, budget, None, far()), 60)
            assert answer.batch_size == 1
        assert model.batches == [[1.0], [2.0]]
        assert model.threads == [threading.get_ident()] * 2
        await engine.drain(5)

    asyncio.run(body())


def test_inline_requests_arriving_over_the_next_loop_turns_join_one_batch() -> None:
    """What the loop reads while the batcher wakes (requests queued one and two turns after
    the first) runs in the first job's batch, up to the maximum; the rest in the next."""

    async def body() -> None:
        model = FakeModel()
        engine = engine_for(model, max_queue_delay_seconds=3600, max_batch_size=4, inline=True)
        engine.start()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Answer]] = []

        def arrive(budget: float) -> None:
            futures.append(engine.submit(IMAGE, budget, None, far()))

        arrive(1.0)
        loop.call_soon(arrive, 2.0)  # the next turn
        loop.call_soon(lambda: loop.call_soon(arrive, 3.0))  # the turn after
        await until(lambda: len(futures) == 3)
        answers = await asyncio.wait_for(asyncio.gather(*futures), 60)
        assert model.batches == [[1.0, 2.0, 3.0]]
        assert [a.batch_size for a in answers] == [3, 3, 3]
        for i in range(6):
            arrive(10.0 + i)
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        assert [len(b) for b in model.batches] == [3, 4, 2]
        await engine.drain(5)

    asyncio.run(body())


def test_inline_drain_finishes_what_was_accepted_and_refuses_the_rest() -> None:
    async def body() -> None:
        model = FakeModel()
        engine = engine_for(model, max_batch_size=2, inline=True)
        engine.start()
        futures = [engine.submit(IMAGE, float(i), None, far()) for i in range(5)]
        await engine.drain(5)
        assert [(await f).bitops for f in futures] == [float(i) for i in range(5)]
        with pytest.raises(ShuttingDown):
            engine.submit(IMAGE, 1.0, None, far())

    asyncio.run(body())


def test_what_arrives_during_a_batch_forms_the_next_one() -> None:
    """While a batch is in the model, the next collects every arrival and runs as one batch
    the moment the model is free (the queue delay, an hour here, is never waited out)."""

    async def body() -> None:
        gate = threading.Event()
        model = FakeModel(gate=gate)
        engine = engine_for(model, max_queue_delay_seconds=3600, max_batch_size=8)
        engine.start()
        first = engine.submit(IMAGE, 1.0, None, far())
        await until(lambda: len(model.batches) == 1)  # in the model, held by the gate
        later = [engine.submit(IMAGE, float(i), None, far()) for i in (2, 3, 4)]
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *later), 60)
        assert model.batches == [[1.0], [2.0, 3.0, 4.0]]
        assert [a.batch_size for a in answers] == [1, 3, 3, 3]
        await engine.drain(5)

    asyncio.run(body())


def test_the_queue_delay_bounds_how_long_a_batch_collects() -> None:
    """With ABN_MAX_QUEUE_DELAY_SECONDS=0 a batch closes on its first job even while the model
    is busy: what arrives after that goes to the batch after it."""

    async def body() -> None:
        gate = threading.Event()
        model = FakeModel(gate=gate)
        engine = engine_for(model, max_queue_delay_seconds=0.0, max_batch_size=8)
        engine.start()
        futures = [engine.submit(IMAGE, 1.0, None, far())]
        await until(lambda: len(model.batches) == 1)
        futures.append(engine.submit(IMAGE, 2.0, None, far()))
        await until(lambda: len(engine._queue) == 0)  # the second batch closed on its own
        futures += [engine.submit(IMAGE, b, None, far()) for b in (3.0, 4.0)]
        gate.set()
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        assert model.batches == [[1.0], [2.0], [3.0, 4.0]]
        await engine.drain(5)

    asyncio.run(body())


def test_expired_jobs_are_dropped_before_the_model() -> None:
    async def body() -> None:
        gate = threading.Event()
        model = FakeModel(gate=gate)
        engine = engine_for(model, max_batch_size=1)
        engine.start()
        first = engine.submit(IMAGE, 1.0, None, far())
        await asyncio.sleep(0.05)  # the first batch is in the model, held by the gate
        late = engine.submit(IMAGE, 2.0, None, time.monotonic() + 0.05)
        await asyncio.sleep(0.1)
        gate.set()
        assert isinstance(await first, Answer)
        with pytest.raises(DeadlineExceeded):
            await late
        assert model.batches == [[1.0]]  # the expired job never reached the model
        await engine.drain(5)

    asyncio.run(body())


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    async def body() -> None:
        gate = threading.Event()
        engine = engine_for(FakeModel(gate=gate), max_batch_size=1, max_queue_size=2)
        engine.start()
        running = engine.submit(IMAGE, 1.0, None, far())
        await asyncio.sleep(0.05)
        queued = [engine.submit(IMAGE, 2.0, None, far()) for _ in range(2)]
        with pytest.raises(QueueFull) as refused:
            engine.submit(IMAGE, 3.0, None, far())
        assert int(refused.value.headers["Retry-After"]) >= 1
        gate.set()
        await asyncio.gather(running, *queued)
        await engine.drain(5)

    asyncio.run(body())


def test_drain_answers_everything_accepted_then_refuses() -> None:
    async def body() -> None:
        model = FakeModel(seconds=0.02)
        engine = engine_for(model, max_batch_size=2)
        engine.start()
        futures = [engine.submit(IMAGE, float(i), None, far()) for i in range(7)]
        await engine.drain(10)
        assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures)
        with pytest.raises(ShuttingDown):
            engine.submit(IMAGE, 1.0, None, far())

    asyncio.run(body())


def test_a_failing_batch_fails_its_jobs_not_the_engine() -> None:
    async def body() -> None:
        model = FakeModel()
        model.fail_next = True
        engine = engine_for(model)
        engine.start()
        with pytest.raises(Exception, match="inference failed"):
            await engine.submit(IMAGE, 1.0, None, far())
        assert isinstance(await engine.submit(IMAGE, 1.0, None, far()), Answer)
        await engine.drain(5)

    asyncio.run(body())


def test_sole_images_widths_are_counted_once_per_batch_as_they_are_answered() -> None:
    """The widths of a request's only image are handed to ``count_widths`` with the rest of
    its batch, before its future resolves; an image of a larger request (its route counts it)
    and an image whose request gave up while its batch ran (nobody answers it) are not."""

    async def body() -> None:
        gate = threading.Event()
        model = FakeModel(gate=gate)
        engine = engine_for(model)
        counted: list[list[list[int]]] = []
        engine.count_widths = counted.append
        engine.start()
        sole = [engine.submit(IMAGE, 1.0, None, far(), sole_image=True) for _ in range(2)]
        part = engine.submit(IMAGE, 2.0, None, far())
        left = engine.submit(IMAGE, 3.0, None, far(), sole_image=True)
        seen_at_answer: list[int] = []
        sole[0].add_done_callback(lambda _: seen_at_answer.append(len(counted)))
        await until(lambda: bool(model.batches))  # the batch of 4 is in the model
        left.cancel()
        gate.set()
        await asyncio.gather(*sole, part)
        assert model.batches == [[1.0, 1.0, 2.0, 3.0]]
        assert counted == [[[4, 4, 4], [4, 4, 4]]]  # one call for the batch, sole images only
        assert seen_at_answer == [1]  # counted before the future's callbacks ran
        await engine.drain(5)

    asyncio.run(body())


def test_batched_answer_equals_one_at_a_time(served_model: ServedModel) -> None:
    model = served_model
    n = 24
    gen = torch.Generator().manual_seed(1)
    images = [torch.from_numpy(fmnist_like(100 + i)).unsqueeze(0) for i in range(n)]
    span = model.max_bitops * 1.2 - model.min_bitops
    budgets = (model.min_bitops + torch.rand(n, generator=gen, dtype=torch.float64) * span).tolist()
    pins = [None] * n
    pins[3] = [8] * model.num_layers
    widths = model.table.bit_candidates
    pins[7] = [widths[i % len(widths)] for i in range(model.num_layers)]  # every width, mixed

    async def batched() -> list[Answer]:
        engine = BatchingEngine(
            model, max_batch_size=n, max_queue_delay_seconds=0.5, max_queue_size=n
        )
        engine.start()
        futures = [engine.submit(images[i], budgets[i], pins[i], far()) for i in range(n)]
        answers = await asyncio.gather(*futures)
        await engine.drain(5)
        return answers

    answers = asyncio.run(batched())
    for i, answer in enumerate(answers):
        assert answer.batch_size == n
        pinned = None if pins[i] is None else torch.tensor([pins[i]])
        alone = model.infer(images[i].unsqueeze(0), torch.tensor([budgets[i]]), pinned)
        assert answer.widths == alone.widths[0].tolist(), i
        assert answer.bitops == alone.bitops[0].item() <= max(budgets[i], model.max_bitops)
        torch.testing.assert_close(answer.probabilities, alone.probabilities[0], atol=1e-4, rtol=0)
        if pins[i] is not None:
            assert answer.widths == pins[i]
