"""abn_client (sync and async) against a real ``abn serve``: budgets, pinned widths, several
images, feedback, typed results and the server's errors as :class:`RequestFailed`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from abn_client import AsyncClient, ClassifyResult, Client, RequestFailed, RetryPolicy
from tests.service.helpers import ServerProcess, png, running_servers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "client-key"
N_LAYERS = 8


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("client")
    with running_servers(tiny_model_dir, logs, {"client": {"api_key": KEY}}) as servers:
        yield servers["client"]


def raw(server: ServerProcess, image: bytes, **headers: str) -> dict:
    """What a hand-written httpx call gets, to compare the client's typed result with."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/png", **headers}
    response = httpx.post(server.url + "/classify", content=image, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_sync_client(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "shirt.png"
    path.write_bytes(png(3))
    with Client(server.url, api_key=KEY) as client:
        assert client.ready()
        card = client.model_card()
        from_path = client.classify(path, budget=card["max_bitops"], request_id="mine")
        pinned = client.classify(png(3), bit_widths=[2] * N_LAYERS, budget="50M")
        many = client.classify_many([png(1), png(2), png(3)], budget=60e6)
        feedback = client.feedback(from_path.id, from_path.label)
    expected = raw(server, png(3), **{"X-BitOps-Budget": str(int(card["max_bitops"]))})
    assert isinstance(from_path, ClassifyResult) and from_path.id == "mine"
    assert (from_path.label, from_path.bit_widths) == (expected["label"], expected["bit_widths"])
    assert from_path.model_name == card["name"] and from_path.policy == "adaptive"
    assert pinned.policy == "pinned" and pinned.bit_widths == [2] * N_LAYERS
    alone = [raw(server, png(i), **{"X-BitOps-Budget": "60000000"}) for i in (1, 2, 3)]
    assert [(r.label, r.bitops) for r in many] == [(a["label"], a["bitops"]) for a in alone]
    assert all(r.budget == 60e6 and r.bitops <= r.budget for r in many)
    assert feedback.outcome == "correct" and feedback.predicted_label == from_path.label


def test_errors_are_typed(server: ServerProcess) -> None:
    with Client(server.url, api_key=KEY) as client, pytest.raises(RequestFailed) as info:
        client.classify(png(0), budget=1)
    assert info.value.status_code == 422 and info.value.error_type == "invalid_budget"
    assert "feasible budgets" in info.value.message and info.value.request_id
    with Client(server.url, retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(RequestFailed) as info:
            client.classify(png(0))
        assert info.value.status_code == 401
        assert client.model_card()["name"]  # the model card needs no key


def test_async_client_concurrently(server: ServerProcess) -> None:
    async def main() -> list[list[ClassifyResult]]:
        async with AsyncClient(server.url, api_key=KEY) as client:
            assert await client.ready()
            return await asyncio.gather(
                *(client.classify_many([png(i), png(i + 1)], budget="100M") for i in range(4))
            )

    batches = asyncio.run(main())
    assert [len(b) for b in batches] == [2, 2, 2, 2]
    assert batches[0][1].label == batches[1][0].label  # the same image, the same answer
