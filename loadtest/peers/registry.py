"""What the bench needs to know of each peer: how to start it and what body it takes.

Kept apart from the servers themselves so the bench, in the project's environment, can read it
without importing torch, LitServe or the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loadtest.server import ManagedServer

PNG = "png"  # the image itself as the body, Content-Type: image/png
JSON_BASE64 = "json-base64"  # {"image": "<base64 PNG>"}, Content-Type: application/json


@dataclass(frozen=True)
class Peer:
    name: str  # what --peers takes
    title: str  # what the page calls it
    module: str  # python -m <module>
    imports: tuple[str, ...]  # modules its interpreter must have
    body: str  # PNG or JSON_BASE64
    per_core: bool = False  # started with --workers <cores>


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "litserve",
            "LitServe (its batching, 32 / 5 ms)",
            "loadtest.peers.litserve_api",
            ("litserve",),
            JSON_BASE64,
        ),
        Peer(
            "naive",
            "naive FastAPI, no batching",
            "loadtest.peers.naive",
            ("fastapi", "uvicorn"),
            PNG,
        ),
        Peer(
            "lean",
            "lean floor (plain ASGI, one process per core)",
            "loadtest.peers.lean",
            ("uvicorn", "orjson"),
            PNG,
            per_core=True,
        ),
    )
}


def parse_peers(text: str) -> tuple[str, ...]:
    """``--peers``: comma-separated names, or ``none``; an unknown name is a ValueError."""
    if text.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise ValueError(f"--peers {text!r}: choose from {', '.join(PEERS)} or none")
    return names


class PeerServer(ManagedServer):
    """A peer on a free port, run by ``python`` (the peers' environment), ready on ``/health``.
    SIGTERM goes to its whole process group: LitServe's workers do not stop with their parent."""

    ready_path = "/health"
    signal_group = True

    def __init__(
        self,
        peer: Peer,
        python: Path,
        model_dir: Path,
        log_path: Path,
        *,
        bits: int,
        torch_threads: int,
        workers: int,
    ) -> None:
        super().__init__(model_dir, log_path)
        self.peer = peer
        self.python = python
        self.options = ["--bits", str(bits), "--torch-threads", str(torch_threads)]
        if peer.per_core:
            self.options += ["--workers", str(workers)]

    @property
    def name(self) -> str:
        return self.peer.name

    def command(self) -> list[str]:
        return [
            str(self.python),
            "-m",
            self.peer.module,
            "--model",
            str(self.model_dir),
            "--port",
            str(self.port),
            *self.options,
        ]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this checkout's code
        return env

    def shell_command(self) -> str:
        """How to start it by hand (the page prints it), with the interpreter the bench used."""
        args = [str(self.python), "-m", self.peer.module, "--model", str(self.model_dir)]
        return " ".join([*args, "--port", "8000", *self.options])
