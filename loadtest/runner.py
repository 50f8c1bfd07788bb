"""The load generator's engine: httpx's ``AsyncClient`` on one asyncio loop (uvloop if present).

Connections are spread over several small clients (:class:`LoadClient`): one big pool costs
several times more client CPU per request at high concurrency.

Why not locust: on this project's 2-core machine the generator shares the CPU with the server it
measures, so it must be cheap and easy to account for. Locust needs gevent, Flask and a master/
worker layout to use more than one core, its open-loop mode (``constant_throughput``) is per-user
pacing that pauses while a user waits (coordinated omission hides queueing), and reading the
response body for accuracy and BitOps means writing custom user code anyway. One asyncio loop
with httpx gives true open-loop arrivals (each request scheduled at its own time, latency
counted from the scheduled time, so client-side queueing shows up as latency), closed-loop
workers, per-request records, and its own CPU time reported next to every run so a saturated
client is visible instead of silently capping the measurement.

Modes:

* open loop (``rate``): arrivals at ``rate`` per second, Poisson (default) or evenly spaced,
  whatever the server does; latency runs from the scheduled send time.
* closed loop (``concurrency``): that many workers, each sending its next request as soon as
  the previous one is answered.

Either stops by itself at ``duration`` seconds (no new requests after it; those in flight
finish) and/or after ``requests`` requests, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import httpx
from tqdm import tqdm

from abn_client import ClassifyResult, RequestFailed
from loadtest.workload import Workload

T = TypeVar("T")


@dataclass(slots=True)
class Record:
    """What one request did. Times are seconds; ``start`` is relative to the run's start."""

    index: int
    group: str
    budget: float | None  # the budget sent (None: no header)
    widths: str | None  # X-Bit-Widths sent (None: adaptive)
    label: int  # true label of the image
    start: float  # scheduled (open loop) or actual (closed loop) send time
    latency: float  # from ``start`` to the full response
    status: int  # HTTP status; 0 when no response came (transport error)
    error: str | None = None  # error_type of an error body, or the exception's class name
    predicted: int | None = None
    bitops: float | None = None  # the answer's bitops (= X-BitOps-Used)
    budget_applied: float | None = None  # the answer's budget (= X-BitOps-Budget)
    policy: str | None = None  # "adaptive" or "pinned"


@dataclass(frozen=True)
class LoadConfig:
    """How much load and for how long."""

    mode: Literal["open", "closed"]
    rate: float | None = None  # open loop: requests per second
    concurrency: int | None = None  # closed loop: workers
    duration: float | None = None  # seconds; no new request after it
    requests: int | None = None  # at most this many requests
    arrivals: Literal["poisson", "constant"] = "poisson"
    seed: int = 0  # arrival times (the workload has its own seed)

    def __post_init__(self) -> None:
        if self.duration is None and self.requests is None:
            raise ValueError("bound the run: give a duration, a request count, or both")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be at least 1")
        if self.mode == "open" and not (self.rate and self.rate > 0):
            raise ValueError("open loop needs a positive rate")
        if self.mode == "closed" and not (self.concurrency and self.concurrency >= 1):
            raise ValueError("closed loop needs a concurrency of at least 1")

    def past_bounds(self, n: int, elapsed: float) -> bool:
        """Whether request ``n`` (counted from 0), due ``elapsed`` seconds into the run, is one
        too many: the one stopping rule of both loops, so a duration and a request count bound
        an open and a closed run alike."""
        if self.requests is not None and n >= self.requests:
            return True
        return self.duration is not None and elapsed >= self.duration

    @property
    def label(self) -> str:
        if self.mode == "open":
            return f"open loop, {self.rate:.4g} req/s ({self.arrivals})"
        return f"closed loop, concurrency {self.concurrency}"


@dataclass
class RunResult:
    """The records of one run and the facts needed to turn them into rates."""

    config: LoadConfig
    records: list[Record]
    started_at: str  # UTC, ISO 8601
    wall_seconds: float  # first send to last answer
    send_seconds: float  # first to last scheduled send (offered rate = sent / this)
    client_cpu_seconds: float  # this process's CPU time during the run
    schedule_lag: list[float] = field(default_factory=list)  # open loop: actual - scheduled

    def config_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), "label": self.config.label}


CONNECTIONS_PER_POOL = 4
# Below uvicorn's 5 s keep-alive timeout: the client closes an idle connection before the server
# does, so a request never goes out on a socket the server is closing (a spurious ReadError).
KEEPALIVE_EXPIRY_SECONDS = 3.0


class LoadClient:
    """httpx ``AsyncClient``s with small connection pools; each request goes to the one with
    the fewest requests in flight.

    Why several: httpcore's pool does work per request that grows with the connections it
    holds. Measured on the 2-core machine against ``abn serve`` at concurrency 32 (see
    docs/profiling.md): one client with 32 connections cost 4.2 ms of client CPU per request and
    capped the server at 234 req/s; eight clients of four connections cost 1.2 ms per request
    and the same server answered 523 req/s. The generator must not be what a benchmark measures.
    """

    def __init__(
        self,
        url: str,
        *,
        connections: int,
        timeout: float,
        headers: dict[str, str],
        per_pool: int = CONNECTIONS_PER_POOL,
    ) -> None:
        pools = max(1, -(-connections // per_pool))
        per = max(1, min(per_pool, connections))
        limits = httpx.Limits(
            max_connections=per,
            max_keepalive_connections=per,
            keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        )
        self._clients = [
            httpx.AsyncClient(
                base_url=url.rstrip("/"),
                limits=limits,
                timeout=httpx.Timeout(timeout),
                headers=headers,
            )
            for _ in range(pools)
        ]
        self._in_flight = [0] * pools
        self.base_url = self._clients[0].base_url

    @property
    def pools(self) -> int:
        return len(self._clients)

    @property
    def in_flight(self) -> list[int]:
        """Requests in flight per pool."""
        return list(self._in_flight)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        i = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[i] += 1
        try:
            return await self._clients[i].request(method, path, **kwargs)
        finally:
            self._in_flight[i] -= 1

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def make_client(
    url: str, *, connections: int = 256, timeout: float = 30.0, api_key: str | None = None
) -> LoadClient:
    """A keep-alive client for ``url``. ``connections`` caps open sockets: in open loop a request
    beyond it waits for a free connection, and that wait counts in its latency."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return LoadClient(url, connections=connections, timeout=timeout, headers=headers)


async def wait_ready(client: LoadClient, timeout: float) -> None:
    """Poll ``/readyz`` until 200, so a run never measures a server still warming up."""
    end = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            response = await client.get("/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as err:
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() >= end:
            raise TimeoutError(f"{client.base_url} not ready after {timeout:g}s ({last})")
        await asyncio.sleep(0.2)


async def fetch_card(client: LoadClient) -> dict[str, Any]:
    """The model card, to resolve relative budgets and check pinned widths before the run."""
    response = await client.get("/v1/model")
    response.raise_for_status()
    return response.json()


async def _send(
    client: LoadClient, workload: Workload, index: int, start: float, t0: float
) -> Record:
    planned = workload.plan(index)
    body = workload.images.png(planned.image)
    record = Record(
        index=index,
        group=planned.group,
        budget=planned.budget,
        widths=planned.widths,
        label=int(workload.images.labels[planned.image]),
        start=start - t0,
        latency=0.0,
        status=0,
    )
    try:
        response = await client.post("/classify", content=body, headers=planned.headers())
    except httpx.HTTPError as err:
        record.latency = time.perf_counter() - start
        record.error = type(err).__name__
        return record
    record.latency = time.perf_counter() - start
    record.status = response.status_code
    _read_answer(record, response)
    return record


def _read_answer(record: Record, response: httpx.Response) -> None:
    """What the answer says, read as abn_client reads it (typed result, or the error's
    ``error_type``); a 200 whose body is not an answer is recorded as an error."""
    if response.is_error:
        record.error = RequestFailed.from_response(response).error_type
        return
    try:
        result = ClassifyResult.from_json(response.json())
    except (ValueError, KeyError, TypeError):
        record.error = "unreadable_answer"
        return
    record.predicted = result.label
    record.bitops = result.bitops
    record.budget_applied = result.budget
    record.policy = result.policy


class _Progress:
    """tqdm on stderr (off when it is not a terminal), with live ok/error counts."""

    def __init__(self, config: LoadConfig, enabled: bool | None) -> None:
        self.bar = tqdm(
            total=config.requests,
            desc=config.label,
            unit="req",
            disable=(None if enabled is None else not enabled),
            leave=True,
            dynamic_ncols=True,
        )
        self.ok = 0
        self.errors = 0
        self._shown = 0.0

    def done(self, record: Record) -> None:
        if record.status == 200:
            self.ok += 1
        else:
            self.errors += 1
        self.bar.update(1)
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            self.bar.set_postfix(ok=self.ok, errors=self.errors, refresh=False)

    def close(self) -> None:
        self.bar.set_postfix(ok=self.ok, errors=self.errors, refresh=False)
        self.bar.close()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection during a measured run (as ``timeit`` does), one after it.

    A process holding torch and a model (the bench's once did, for offline figures): a full
    collection over that heap took 0.11-0.14 s on the 2-core machine, and a generator that stalls
    that long delays its sends, which an open-loop run rightly counts as latency: seen as a
    173 ms send lag and a p99 of 203 ms in one half-load run. A run of seconds makes little
    cyclic garbage; it is collected as soon as the run ends.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


async def run_load(
    client: LoadClient,
    workload: Workload,
    config: LoadConfig,
    *,
    first_index: int = 0,
    progress: bool | None = None,
) -> RunResult:
    """One run of ``config`` against ``client``'s server; requests ``first_index, ...`` of the
    workload (consecutive runs can continue the sequence instead of replaying it)."""
    records: list[Record] = []
    lag: list[float] = []
    bar = _Progress(config, progress)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def keep(record: Record) -> None:
        records.append(record)
        bar.done(record)

    with collector_paused():
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        try:
            if config.mode == "open":
                send_span = await _open_loop(client, workload, config, first_index, t0, keep, lag)
            else:
                send_span = await _closed_loop(client, workload, config, first_index, t0, keep)
        finally:
            bar.close()
        wall = time.perf_counter() - t0
    records.sort(key=lambda r: r.index)
    return RunResult(
        config=config,
        records=records,
        started_at=started_at,
        wall_seconds=wall,
        send_seconds=send_span,
        client_cpu_seconds=time.process_time() - cpu0,
        schedule_lag=lag,
    )


async def _open_loop(
    client: LoadClient,
    workload: Workload,
    config: LoadConfig,
    first: int,
    t0: float,
    keep: Callable[[Record], None],
    lag: list[float],
) -> float:
    assert config.rate is not None
    rng = random.Random(config.seed)
    in_flight: set[asyncio.Task[None]] = set()
    offset = 0.0  # scheduled time of the next request, from t0
    last_offset = 0.0

    async def one(index: int, scheduled: float) -> None:
        lag.append(time.perf_counter() - scheduled)
        keep(await _send(client, workload, index, scheduled, t0))

    for n in itertools.count():
        if config.past_bounds(n, offset):
            break
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(first + n, t0 + offset))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        last_offset = offset
        if config.arrivals == "poisson":
            offset += rng.expovariate(config.rate)
        else:  # n / rate, not a running sum: no float drift in how many fit in the duration
            offset = (n + 1) / config.rate
    if in_flight:
        await asyncio.gather(*list(in_flight))
    # n requests span n-1 gaps; add one mean gap so that sent / span is the offered rate
    return last_offset + 1.0 / config.rate


async def _closed_loop(
    client: LoadClient,
    workload: Workload,
    config: LoadConfig,
    first: int,
    t0: float,
    keep: Callable[[Record], None],
) -> float:
    assert config.concurrency is not None
    counter = itertools.count()
    last_send = t0

    async def worker() -> None:
        nonlocal last_send
        while True:
            now = time.perf_counter()
            n = next(counter)
            if config.past_bounds(n, now - t0):
                return
            last_send = max(last_send, now)
            keep(await _send(client, workload, first + n, now, t0))

    await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    return max(last_send - t0, 1e-9)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (a cheaper client loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
