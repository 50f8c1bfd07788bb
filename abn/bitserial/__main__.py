"""``python -m abn.bitserial``: compile the bit-serial kernels (install time: make venv, the
Dockerfile). Every kernel this architecture has is built, whatever this CPU runs, so an image
built on one machine serves on another."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from abn.bitserial.build import PACKAGE_BUILD_DIR, build
from abn.bitserial.cpu import KERNELS, BitSerialUnavailableError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m abn.bitserial", description="compile the bit-serial kernels"
    )
    parser.add_argument("--out", type=Path, default=PACKAGE_BUILD_DIR, help="target directory")
    args = parser.parse_args(argv)
    kernels = KERNELS if platform.machine() in ("x86_64", "AMD64") else ("scalar",)
    try:
        for kernel in kernels:
            print(build(kernel, args.out))
    except BitSerialUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
