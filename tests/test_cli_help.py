"""Every command-line entry point prints its help: argparse formats help strings lazily, so a
stray ``%`` in one (a budget such as ``25%``) only fails when a user asks for ``--help``."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import pytest

from commands.abn import main as abn_main
from loadtest.bench import main as bench_main
from loadtest.cli import main as loadtest_main
from loadtest.offline import main as offline_main
from loadtest.soak import main as soak_main

ENTRY_POINTS: list[tuple[str, Callable[..., object], list[str]]] = [
    ("abn", abn_main, []),
    ("abn serve", abn_main, ["serve"]),
    ("abn train supernet", abn_main, ["train", "supernet"]),
    ("abn train policy", abn_main, ["train", "policy"]),
    ("abn evaluate", abn_main, ["evaluate"]),
    ("python -m loadtest", loadtest_main, []),
    ("python -m loadtest.bench", bench_main, []),
    ("python -m loadtest.offline", offline_main, []),
    ("python -m loadtest.soak", soak_main, []),
]


@pytest.mark.parametrize(("name", "main", "prefix"), ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_help_prints_usage_and_exits_zero(
    name: str, main: Callable[..., object], prefix: list[str]
) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        main([*prefix, "--help"])
    assert stop.value.code == 0
    assert "usage:" in out.getvalue()
