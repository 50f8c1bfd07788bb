"""Request ids that carry their own prediction, signed, so ``POST /feedback`` needs no shared
state: any worker process, or any replica holding the same key, can score them.

A generated id (the client sent no ``X-Request-ID``) is ``<32 hex>.<label>.<expiry ms>.<mac>``:
the random part is what the request's log lines carry, the label is the prediction, the expiry
is wall-clock milliseconds (now + ``ABN_FEEDBACK_TTL_SECONDS``), and the MAC (HMAC-SHA256,
128 bits, base64url) covers all three and the model's name and version, so an id is refused
by a server whose key or model differs. An id the client chose cannot carry anything; those are
remembered by the process that answered (:class:`service.feedback.RecentPredictions`), as
before.

The key is ``ABN_FEEDBACK_KEY`` when set (the same on every replica: feedback then works
through any of them, and across restarts); unset, ``abn serve`` draws one per start and gives
it to its workers only. What a stateless id cannot do: refuse a second vote sent to another
process (each process refuses repeats it has seen), or be revoked before it expires but by
changing the key (which voids every outstanding id).
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from collections.abc import Callable

_MAC_BYTES = 16
_SIGNED = re.compile(
    r"(?P<base>[0-9a-f]{32})\.(?P<label>\d{1,6})\.(?P<expiry>\d{1,16})\.(?P<mac>[A-Za-z0-9_-]{22})"
)


class SignedIds:
    """Issues and checks signed request ids for one model and key."""

    def __init__(
        self,
        key: bytes,
        model: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._model = model.encode()
        self.ttl = ttl_seconds
        self._clock = clock

    def _mac(self, base: str, label: int, expiry_ms: int) -> str:
        message = f"{base}.{label}.{expiry_ms}.".encode() + self._model
        digest = hmac.digest(self._key, message, "sha256")[:_MAC_BYTES]  # one-shot, in C
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, base: str, label: int) -> str:
        """The id for a generated ``base`` (32 hex digits) whose prediction is ``label``."""
        expiry_ms = int((self._clock() + self.ttl) * 1000)
        return f"{base}.{label}.{expiry_ms}.{self._mac(base, label, expiry_ms)}"

    def read(self, request_id: str) -> tuple[int, bool] | None:
        """``(label, expired)`` of an id this key and model signed; None for any other id."""
        match = _SIGNED.fullmatch(request_id)
        if match is None:
            return None
        label, expiry_ms = int(match["label"]), int(match["expiry"])
        if not hmac.compare_digest(match["mac"], self._mac(match["base"], label, expiry_ms)):
            return None
        return label, self._clock() * 1000 > expiry_ms
