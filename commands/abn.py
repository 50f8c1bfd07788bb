"""The ``abn`` console script: ``serve`` from the service, ``train`` and ``evaluate`` from the
library. It lives outside both packages so that ``abn/`` never imports ``service/``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from abn import cli as library_cli
from abn.store import DEFAULT_MODEL_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abn", description="Budget-aware adaptive-precision image classification."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model directory over HTTP")
    serve.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"model directory (default: ABN_MODEL_DIR or {DEFAULT_MODEL_DIR})",
    )
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1, or ABN_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    library_cli.add_library_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from service.server import run_from_cli

        return run_from_cli(model=args.model, host=args.host, port=args.port)
    return library_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
