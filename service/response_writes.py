"""One socket write per response, not two: :class:`HeadWithBody`.

uvicorn's response cycle writes the status line and headers when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two ``send(2)``
calls for every answer, where one would do. On the 2-core machine a loopback send of a few
hundred bytes costs 6-7 µs of CPU and two cost 12-13 (``scripts/response_writes.py``), the
kernel's delivery to the client included; at saturation that is about 1 % of what a
``/classify`` costs the server (docs/profiling.md, issue 19). The HTTP protocol
(:class:`service.connections.GuardedHttpToolsProtocol`) gives each request's cycle this
wrapper of its transport, which holds the head until the first body write and sends both at
once. The client sees the same bytes in the same order.

Every response of a method other than HEAD ends with a body write (uvicorn writes the body, or
the last chunk, even when it is empty), which releases the head; a HEAD response has none, so
its cycle keeps the plain transport. Closing releases a head still held (an app that failed
after starting its response: uvicorn then closes the connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

CONTINUE = b"HTTP/1.1 100 "  # the interim answer uvicorn writes before reading a body: not held


class HeadWithBody:
    """A transport as one response cycle sees it: the response head waits for the body."""

    __slots__ = ("_transport", "_head", "_started")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started and data.startswith(b"HTTP/") and not data.startswith(CONTINUE):
            self._started = True
            self._head = bytes(data)  # the status line and headers: sent with the body
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            self._transport.write(self._head)
            self._head = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's
        return getattr(self._transport, name)
