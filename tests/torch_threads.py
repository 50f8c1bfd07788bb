"""Torch on one intra-op thread for a while, as the in-process tests run the tiny model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread inside, the previous count restored after: the tiny model gains
    nothing from more, and on a small shared box more threads only wait on each other. The
    one owner of that switch for fixtures of every scope (a fixture's scope is fixed where it
    is defined, so each scope has its own fixture around this)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
