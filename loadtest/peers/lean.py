"""The lean floor: a plain ASGI callable on uvicorn, one process per core, no framework.

It is the bench's measure of what this machine can do at all with this model and decoding:
no routing, dependency solving or response validation, no metrics, no thread hand-off. The
model runs on the event loop itself, over every request that arrived while the previous batch
ran (:class:`InlineBatcher`): an idle server answers a lone request at once, a busy one
batches what queued, and no lock is passed between a loop thread and a model thread. Several
processes use every core, each with its model and a listening socket of its own on the one
port (``SO_REUSEPORT``, bound as ``abn serve`` binds its workers': with uvicorn's
``--workers`` all share one socket, and connections opened together go mostly to whichever
worker is awake).

    python -m loadtest.peers.lean --model model_store/fmnist-abn --port 8000 --workers 2
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import torch
import uvicorn
from PIL import UnidentifiedImageError

from loadtest.peers.model import PinnedModel, checked_directory, load_or_exit, peer_arguments
from service.supervisor import bind  # abn serve's: a socket per worker on one port

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
MAX_BATCH = 32


class InlineBatcher:
    """Runs the model on the loop, one batch per loop turn, over what is queued then."""

    def __init__(self, model: PinnedModel, max_batch: int = MAX_BATCH) -> None:
        self.model = model
        self.max_batch = max_batch
        self.pending: list[tuple[torch.Tensor, asyncio.Future[dict[str, Any]]]] = []
        self.scheduled = False

    def submit(self, image: torch.Tensor) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.pending.append((image, future))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._run_batch)
        return future

    def _run_batch(self) -> None:
        batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
        try:
            answers = self.model.classify_batch([image for image, _ in batch])
        except Exception as err:  # every request of the batch gets the error, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
        else:
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
        self.scheduled = bool(self.pending)
        if self.scheduled:
            asyncio.get_running_loop().call_soon(self._run_batch)


class LeanApp:
    """``POST /classify`` (image body) and ``GET /health``; everything else 404."""

    def __init__(self, model: PinnedModel) -> None:
        self.batcher = InlineBatcher(model)
        self.decode = model.decode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == "/health" and method == "GET":
            await _respond(send, 200, {"status": "ok"})
        elif path == "/classify" and method == "POST":
            body = await _read_body(receive)
            try:
                image = self.decode(body)
            except (UnidentifiedImageError, OSError):
                await _respond(send, 400, {"error": "not a decodable image"})
                return
            await _respond(send, 200, await self.batcher.submit(image))
        else:
            await _respond(send, 404, {"error": "not found"})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)  # the service's encoder: the floor is not slowed by its JSON
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve_socket(app: LeanApp, sock: socket.socket) -> None:
    """One worker: uvicorn (httptools, uvloop where installed) on its inherited socket."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def main() -> None:
    parser = peer_arguments(__doc__ or "")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--fd", type=int, help="(a worker) serve this inherited socket")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: at least 1")
    if args.fd is not None:
        serve_socket(LeanApp(load_or_exit(parser, args)), socket.socket(fileno=args.fd))
        return
    checked_directory(parser, args)  # a mistake fails here, once; no model in this process
    try:
        sockets = bind(args.host, args.port, args.workers)
    except OSError as err:
        parser.error(f"cannot listen on {args.host}:{args.port}: {err}")
    workers = []
    for sock in sockets:
        fd = sock.fileno()
        command = [sys.executable, "-m", "loadtest.peers.lean", *sys.argv[1:], "--fd", str(fd)]
        workers.append(subprocess.Popen(command, pass_fds=(fd,)))
        sock.close()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _: [w.send_signal(number) for w in workers])
    # uvicorn re-raises the signal it shut down on, so a worker stopped by one "dies" of it
    stopped = {0, -signal.SIGTERM, -signal.SIGINT}
    sys.exit(0 if all(w.wait() in stopped for w in workers) else 1)


if __name__ == "__main__":
    main()
