"""Every command-line entry point prints its help: argparse formats help strings lazily, so a
stray ``%`` in one (a budget such as ``25%``) only fails when a user asks for ``--help``."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from commands.abn import build_parser
from commands.abn import main as abn_main
from loadtest.bench import main as bench_main
from loadtest.cli import main as loadtest_main
from loadtest.handoff import main as handoff_main
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
    ("python -m loadtest.handoff", handoff_main, []),
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


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            parsers[name] = parser
        for sub in subs:
            for child, child_parser in sub.choices.items():
                walk(child_parser, f"{name} {child}")

    walk(build_parser(), "abn")
    return parsers


def test_every_option_of_every_subcommand_has_help_text() -> None:
    parsers = _subcommand_parsers()
    assert {"abn serve", "abn train supernet", "abn train policy", "abn evaluate"} <= set(parsers)
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, parser in parsers.items()
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert missing == []


def test_architectures_list_the_input_they_expect() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        abn_main(["train", "supernet", "--help"])
    text = " ".join(out.getvalue().split())
    assert "resnet8_fmnist (1x28x28 grayscale)" in text
    assert "resnet20_cifar (3x32x32 RGB)" in text


def test_docs_own_data_describes_every_option_of_every_subcommand() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "own-data.md").read_text()
    commands = ("abn serve", "abn train supernet", "abn train policy", "abn evaluate")
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, parser in _subcommand_parsers().items()
        if name in commands
        for action in parser._actions
        if action.option_strings and action.option_strings[0] != "-h"
        if action.option_strings[-1] not in text
    ]
    assert missing == []
