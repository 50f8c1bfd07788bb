"""One worker of ``abn serve`` with ``ABN_WORKERS`` > 1, started by :mod:`service.supervisor`.

It serves the listening socket it inherited (``--fd``) exactly as a single server would: its
own model, batcher, readiness, deadlines, shedding and drain on SIGTERM. Its settings come from
the environment the supervisor passed on (``ABN_WORKERS=1`` among them).
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from service.logs import configure_logging
from service.server import serve_one
from service.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abn serve (worker)")
    parser.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    args = parser.parse_args(argv)
    settings = Settings()  # checked by abn serve before the supervisor started
    configure_logging(settings.log_format, settings.log_level)
    return serve_one(settings, socket.socket(fileno=args.fd))


if __name__ == "__main__":
    sys.exit(main())
