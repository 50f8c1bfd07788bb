"""service.jobs: a request of several images is admitted whole and answered whole, and the
jobs it no longer needs are cancelled (so the batcher drops them before the model)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import torch
from starlette.requests import Request

from service.connections import GONE_KEY
from service.cost import CostRequest
from service.engine import Answer
from service.errors import ClientGone, DeadlineExceeded, InvalidImage, QueueFull
from service.jobs import submit_all, wait_all

pytestmark = pytest.mark.timeout(30)

COST = CostRequest(1e8, None)
IMAGE = torch.zeros(1, 28, 28, dtype=torch.uint8)


class RefusingEngine:
    """Queues ``room`` jobs, then answers 429 as a full queue does."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.futures: list[asyncio.Future[Answer]] = []

    def submit(self, *args: Any) -> asyncio.Future[Answer]:
        if len(self.futures) >= self.room:
            raise QueueFull("the queue is full", 1)
        self.futures.append(asyncio.get_running_loop().create_future())
        return self.futures[-1]


def request(disconnect: asyncio.Event) -> Request:
    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def answer() -> Answer:
    return Answer(torch.ones(10) / 10, [4] * 8, 1e7, 1, [0], [0.1], None)


def test_admission_is_all_or_none() -> None:
    async def main() -> RefusingEngine:
        engine = RefusingEngine(room=2)
        with pytest.raises(QueueFull):
            submit_all(engine, [IMAGE] * 3, COST, time.monotonic() + 5, "r")  # type: ignore[arg-type]
        return engine

    engine = asyncio.run(main())
    assert len(engine.futures) == 2 and all(f.cancelled() for f in engine.futures)


def test_one_failing_image_fails_the_request_and_cancels_the_rest() -> None:
    async def main() -> list[asyncio.Future[Answer]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        futures[0].set_result(answer())
        loop.call_later(0.01, futures[1].set_exception, InvalidImage("bad"))
        with pytest.raises(InvalidImage):
            await wait_all(request(asyncio.Event()), futures, time.monotonic() + 5)
        return futures

    futures = asyncio.run(main())
    assert futures[2].cancelled()


def test_answers_in_order() -> None:
    async def main() -> list[Answer]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        answers = [answer() for _ in futures]
        for i in (2, 0, 1):  # settled out of order
            loop.call_later(0.001 * i, futures[i].set_result, answers[i])
        got = await wait_all(request(asyncio.Event()), futures, time.monotonic() + 5)
        assert all(g is a for g, a in zip(got, answers, strict=True))
        return got

    assert len(asyncio.run(main())) == 3


@pytest.mark.parametrize("n", [1, 3])
def test_deadline_and_disconnect_cancel_every_job(n: int) -> None:
    async def main() -> tuple[list[asyncio.Future[Answer]], list[asyncio.Future[Answer]]]:
        loop = asyncio.get_running_loop()
        late = [loop.create_future() for _ in range(n)]
        with pytest.raises(DeadlineExceeded):
            await wait_all(request(asyncio.Event()), late, time.monotonic() + 0.05)
        gone = [loop.create_future() for _ in range(n)]
        disconnect = asyncio.Event()
        loop.call_later(0.01, disconnect.set)
        with pytest.raises(ClientGone):
            await wait_all(request(disconnect), gone, time.monotonic() + 5)
        return late, gone

    late, gone = asyncio.run(main())
    assert all(f.cancelled() for f in late + gone)


def test_the_protocols_gone_future_ends_the_wait_without_reading_messages() -> None:
    """Served by the service's protocol, the scope carries a future resolved when the client
    leaves: the wait ends on it (499) and never calls ``receive``."""

    reads = []

    async def receive() -> dict[str, Any]:
        reads.append(1)
        await asyncio.Event().wait()  # no message would ever come
        raise AssertionError("unreachable")

    async def main() -> list[asyncio.Future[Answer]]:
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        scope = {"type": "http", "method": "POST", "headers": [], GONE_KEY: gone}
        futures = [loop.create_future() for _ in range(2)]
        loop.call_later(0.01, gone.set_result, None)
        with pytest.raises(ClientGone):
            await wait_all(Request(scope, receive), futures, time.monotonic() + 1)
        return futures

    assert all(f.cancelled() for f in asyncio.run(main()))
    assert reads == []
