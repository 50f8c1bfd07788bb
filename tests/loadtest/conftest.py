"""Fixtures of the load-generator tests: one real ``abn serve`` of the tiny model for the module
that needs it (started with the service tests' helper), and one torch thread in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.helpers import ServerProcess
from tests.torch_threads import single_torch_thread


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from more threads; on a small shared box they only wait."""
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real server; batches fill for at most 2 ms so tiny runs stay quick."""
    process = ServerProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("loadtest-server") / "server.log",
        max_queue_delay_seconds=0.002,
    )
    try:
        process.wait_ready()
        yield process.url
    finally:
        code = process.stop()
    assert code == 0, process.log()
