"""Fixtures of the service tests: one loaded tiny model shared by every in-process app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from service.app import create_app
from service.model import ServedModel
from service.settings import Settings
from tests.torch_threads import single_torch_thread


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Inference in these tests runs on one intra-op thread: the tiny model gains nothing from
    more, and on a small shared CI box more threads only wait on each other. Restored after."""
    with single_torch_thread():
        yield


@pytest.fixture(scope="session")
def served_model(tiny_model_dir: Path) -> ServedModel:
    return ServedModel.load(tiny_model_dir, "cpu")


@pytest.fixture
def make_app(served_model: ServedModel, tiny_model_dir: Path) -> Callable[..., FastAPI]:
    """An app around the shared model, with settings overridden by keyword."""

    def make(**overrides: object) -> FastAPI:
        settings = Settings(model_dir=tiny_model_dir, device="cpu", **overrides)
        return create_app(settings, model=served_model)

    return make
