"""CPU microseconds per HTTP answer written to a loopback TCP socket as two writes (head, then
body: what uvicorn does) and as one (what ``service.response_writes.HeadWithBody`` makes of
it), so the saving can be checked on another machine (issue 19; docs/profiling.md).

The sending thread's CPU time is measured: on loopback it includes the kernel's delivery to
the receiving socket, as a served answer's does. A second thread drains the socket.

    .venv/bin/python scripts/response_writes.py --answers 50000 --repeats 5
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from collections.abc import Callable

HEAD = b"HTTP/1.1 200 OK\r\n" + b"x-header: value\r\n" * 11 + b"\r\n"  # a /classify head's size
BODY = b"{" + b"y" * 708 + b"}"  # a /classify body's size


def connected_pair() -> tuple[socket.socket, socket.socket]:
    """A sending and a receiving socket of one loopback connection, without Nagle's delay."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        receiver = socket.create_connection(server.getsockname())
        sender, _ = server.accept()
    for s in (sender, receiver):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sender, receiver


def drain(receiver: socket.socket) -> None:
    while receiver.recv(1 << 20):
        pass


def cpu_us_per_answer(write: Callable[[], object], answers: int) -> float:
    start = time.thread_time()
    for _ in range(answers):
        write()
    return (time.thread_time() - start) / answers * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=50_000, help="per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    args = parser.parse_args()
    if args.answers < 1 or args.repeats < 1:
        parser.error("--answers and --repeats must be at least 1")
    sender, receiver = connected_pair()
    threading.Thread(target=drain, args=(receiver,), daemon=True).start()
    ways = {
        "two writes": lambda: (sender.sendall(HEAD), sender.sendall(BODY)),
        "one write": lambda: sender.sendall(HEAD + BODY),
    }
    runs: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):  # interleaved, so both see the same machine
        for name, write in ways.items():
            runs[name].append(cpu_us_per_answer(write, args.answers))
    for name, values in runs.items():
        print(f"{name}: {statistics.median(values):.2f} µs of CPU per answer (median)")
    sender.close()


if __name__ == "__main__":
    main()
