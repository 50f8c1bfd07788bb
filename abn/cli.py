"""The library's commands: ``train supernet``, ``train policy``, ``evaluate``.

The ``abn`` console script (``commands/abn.py``) adds ``serve`` on top; ``python -m abn.cli``
runs these alone (as ``torchrun`` does for distributed training).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from abn.store import DEFAULT_MODEL_DIR

__all__ = ["DEFAULT_MODEL_DIR", "add_library_commands", "build_parser", "main", "run"]


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per field of a training config, typed and defaulted from the field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, type=typing.get_args(kind)[0], nargs="+", default=default)
        else:
            parser.add_argument(flag, type=kind, default=default)


def _config_from(cls: type, args: argparse.Namespace) -> object:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_library_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to a parser's sub-commands."""
    from abn.train.policy import PolicyTrainConfig
    from abn.train.supernet import SupernetTrainConfig

    train = sub.add_parser("train", help="train a stage").add_subparsers(
        dest="stage", required=True
    )
    _add_dataclass_options(
        train.add_parser("supernet", help="stage 1: the supernet"), SupernetTrainConfig
    )
    _add_dataclass_options(
        train.add_parser("policy", help="stage 2: the per-image policy"), PolicyTrainConfig
    )

    evaluate = sub.add_parser("evaluate", help="accuracy/BitOps tables and plots")
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where report.json, report.md and pareto.png go (default: MODEL/evaluation)",
    )
    evaluate.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory")
    evaluate.add_argument("--random-configs", type=int, default=100)
    evaluate.add_argument("--budgets", type=int, default=10)
    evaluate.add_argument(
        "--search",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search the best static mixed configurations on validation",
    )
    evaluate.add_argument(
        "--update-manifest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the accuracy tables into the manifest",
    )
    evaluate.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abn", description=__doc__)
    add_library_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``train`` or ``evaluate`` command."""
    if args.command == "train" and args.stage == "supernet":
        from abn.train.supernet import SupernetTrainConfig, train_supernet

        train_supernet(_config_from(SupernetTrainConfig, args))
        return 0
    if args.command == "train" and args.stage == "policy":
        from abn.train.policy import PolicyTrainConfig, train_policy

        train_policy(_config_from(PolicyTrainConfig, args))
        return 0
    if args.command == "evaluate":
        from abn.evaluate import EvaluateOptions, evaluate_model

        evaluate_model(EvaluateOptions(**{k: v for k, v in vars(args).items() if k != "command"}))
        return 0
    raise ValueError(f"not a library command: {args.command}")


if __name__ == "__main__":
    sys.exit(main())
