"""Integration: ``ABN_WORKERS=2``, real processes. Both workers serve the one port, a scrape of
either shows the sum over both, a generated request id is scored by whichever process (or
replica with the same key) receives its feedback, SIGTERM drains every worker, and a worker
that cannot load its model stops the server.

Each request below goes on a fresh connection, so the kernel hands it to whichever worker
accepts first; which one that is is up to the scheduler. The tests check facts that hold
whatever the split, and that the split happened (from the per-process metric files).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from .helpers import Scrape, ServerProcess, png, run_with_model_held

pytestmark = pytest.mark.timeout(480)  # two model loads on a shared 2-core box

PNG = {"Content-Type": "image/png"}
IMAGES = [png(3000 + i) for i in range(8)]
KEY = "shared-feedback-key"


def fresh() -> httpx.Client:
    """A client that opens a new connection for every request."""
    return httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def wait_all_ready(server: ServerProcess) -> None:
    """``/readyz`` 200 means every worker is ready: from then on no fresh connection, whichever
    worker takes it, meets a model still loading."""
    server.wait_ready(timeout=300)
    with fresh() as c:
        for _ in range(30):
            assert c.get(server.url + "/v1/model").status_code == 200
            assert c.get(server.url + "/readyz").status_code == 200


def metrics_dir(tmp: Path) -> Path:
    """The server's PROMETHEUS_MULTIPROC_DIR (made under its TMPDIR)."""
    (found,) = tmp.glob("abn-serve-*/metrics")
    return found


def per_pid(directory: Path, name: str, kind: str = "counter", **labels: str) -> dict[int, float]:
    """Each worker's own value of a sample, from its ``kind`` files (``counter``, or a gauge's
    mode file such as ``gauge_livesum``)."""
    out: dict[int, float] = {}
    for path in directory.glob(f"{kind}_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, sample_labels, _ = json.loads(key)
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items()):
                out[pid] = out.get(pid, 0.0) + value
    return out


def launch_two_workers(
    model_dir: Path, tmp_path: Path, log_name: str, **settings: object
) -> tuple[ServerProcess, Path]:
    """Launch (not wait for) a server of two workers with the model gate under ``tmp_path``
    and a TMPDIR of its own, where its run and metrics directories are made so that a test
    can read them; returns it and that TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = ServerProcess(
        model_dir,
        tmp_path / log_name,
        model_gate=tmp_path / "model-gate",
        workers=2,
        extra_env={"TMPDIR": str(tmp)},
        **settings,
    )
    return server, tmp


@pytest.fixture
def two_workers(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    # A shutdown delay, as behind a load balancer: without one the listener closes within
    # uvicorn's 0.1 s tick of the signal, and whether a probe sees the 503 first is a race.
    server, tmp = launch_two_workers(
        tiny_model_dir,
        tmp_path,
        "workers.log",
        feedback_key=KEY,
        shutdown_timeout_seconds=30,
        shutdown_delay_seconds=1.0,
    )
    try:
        wait_all_ready(server)
        yield server, tmp
    finally:
        server.stop()


def test_two_workers_serve_one_port_and_a_scrape_sums_both(
    two_workers: tuple[ServerProcess, Path],
) -> None:
    server, tmp = two_workers
    n = 40
    with fresh() as c:
        answers = [
            c.post(server.url + "/classify", content=IMAGES[i % 8], headers=PNG) for i in range(n)
        ]
        assert [r.status_code for r in answers] == [200] * n
        scrapes = [Scrape(c.get(server.url + "/metrics").text) for _ in range(6)]
    served = per_pid(metrics_dir(tmp), "abn_requests_total", route="/classify")
    assert len(served) == 2 and all(v > 0 for v in served.values()), served  # both worked
    assert sum(served.values()) == n
    for scrape in scrapes:  # whichever worker answered the scrape: the sum over both
        assert scrape.value("abn_requests_total", route="/classify", status_code="200") == n
        assert scrape.value("abn_batch_size_sum") == n
        assert scrape.value("abn_bitops_used_count") == n
        assert scrape.value("abn_model_info") == 1  # one model, not one per worker
        assert scrape.value("abn_pending_requests") == 0
        assert scrape.value("process_resident_memory_bytes") > 0

    # feedback on a fresh connection each: about half land on the other worker
    with fresh() as c:
        for r in answers:
            out = r.json()
            scored = c.post(server.url + "/feedback", json={"id": out["id"], "label": out["label"]})
            assert scored.status_code == 200, scored.text
            assert scored.json()["outcome"] == "correct"
        metrics = Scrape(c.get(server.url + "/metrics").text)
    assert metrics.value("abn_feedback_total", outcome="correct") == n
    scored_by = per_pid(metrics_dir(tmp), "abn_feedback_total")
    assert len(scored_by) == 2 and sum(scored_by.values()) == n


def test_sigterm_drains_every_worker(two_workers: tuple[ServerProcess, Path]) -> None:
    """With the model held, requests are accepted by both workers; SIGTERM to the server:
    readiness 503, every accepted request answered 200 once the model runs, exit 0, and the
    metrics directory removed."""
    server, tmp = two_workers
    directory = metrics_dir(tmp)
    gate = server.model_gate
    assert gate is not None
    wave, most = 16, 64  # at least a wave; more until both workers hold some of it

    async def body() -> tuple[list[int], int]:
        limits = httpx.Limits(max_connections=most, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c,
            httpx.AsyncClient(base_url=server.url, timeout=10) as probe,
        ):
            # One at a time, each once the last is in: a burst of new connections would all be
            # accepted by whichever worker woke first; one by one, either may take each.
            sent = []
            end = time.monotonic() + 60
            # Which worker accepts a connection is the kernel's choice and it may favour one
            # for a while: send until both hold part of the wave (64 to one is not a draw).
            holding: dict[int, float] = {}
            while len(sent) < wave or (len(holding) < 2 and len(sent) < most):
                i = len(sent)
                sent.append(
                    asyncio.create_task(c.post("/classify", content=IMAGES[i % 8], headers=PNG))
                )
                while Scrape((await probe.get("/metrics")).text).value(
                    "abn_pending_requests"
                ) < len(sent):
                    assert time.monotonic() < end, "the wave never queued"
                    await asyncio.sleep(0.02)
                pending = per_pid(directory, "abn_pending_requests", kind="gauge_livesum")
                holding = {pid: v for pid, v in pending.items() if v > 0}
            assert len(holding) == 2, f"{len(sent)} requests, all held by one worker"
            os.kill(server.proc.pid, signal.SIGTERM)
            while (await probe.get("/readyz")).status_code != 503:
                assert time.monotonic() < end, "readiness never dropped"
                await asyncio.sleep(0.02)
            gate.unlink()
            answered = await asyncio.gather(*sent)
            return [r.status_code for r in answered], len(
                per_pid(directory, "abn_requests_total", route="/classify")
            )

    codes, workers_with_requests = run_with_model_held(gate, body)
    rc = server.proc.wait(timeout=60)
    assert codes == [200] * len(codes) and len(codes) >= wave, server.log()
    assert workers_with_requests == 2  # both had accepted part of the wave
    assert rc == 0, server.log()
    assert not directory.exists()
    assert "Traceback" not in server.log()


def test_a_generated_id_is_scored_by_another_replica_with_the_same_key(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two independent servers (replicas) with one ABN_FEEDBACK_KEY: an id answered by one is
    scored by the other (once: a repeat there is 409); a replica with another key, or an id
    the client chose, is unknown to it (404)."""
    a, b, other = (
        ServerProcess(tiny_model_dir, tmp_path / f"{name}.log", feedback_key=key)
        for name, key in (("a", KEY), ("b", KEY), ("other", "another-key"))
    )
    try:
        for server in (a, b, other):
            server.wait_ready(timeout=300)
        with httpx.Client(timeout=30) as c:
            out = c.post(a.url + "/classify", content=IMAGES[0], headers=PNG).json()
            chosen = c.post(
                a.url + "/classify", content=IMAGES[1], headers={**PNG, "X-Request-ID": "mine"}
            ).json()
            assert chosen["id"] == "mine"
            wrong = (out["label"] + 1) % 10
            r = c.post(b.url + "/feedback", json={"id": out["id"], "label": wrong})
            assert r.status_code == 200, r.text
            assert r.json() == {
                "id": out["id"],
                "label": wrong,
                "predicted_label": out["label"],
                "outcome": "incorrect",
            }
            assert (
                c.post(b.url + "/feedback", json={"id": out["id"], "label": 1}).status_code == 409
            )
            assert (
                c.post(other.url + "/feedback", json={"id": out["id"], "label": 1}).status_code
                == 404
            )
            assert c.post(b.url + "/feedback", json={"id": "mine", "label": 1}).status_code == 404
            assert c.post(a.url + "/feedback", json={"id": "mine", "label": 1}).status_code == 200
    finally:
        codes = [s.stop() for s in (a, b, other)]
    assert codes == [0, 0, 0]
