"""Settings shared by the model-library tests."""

from __future__ import annotations

from collections.abc import Generator

import pytest
import torch

_THREADS = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Run torch on one thread for these tests, fixtures included (a session fixture such as
    ``tiny_model_dir`` may be built inside them). On a small, busy machine intra-op threads
    fight each other: a training step measured 20x slower with two threads beside another job.
    Runtest hooks of this conftest apply only to the tests under this directory."""
    item.stash[_THREADS] = torch.get_num_threads()
    torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    try:
        return (yield)
    finally:
        torch.set_num_threads(item.stash.get(_THREADS, torch.get_num_threads()))
