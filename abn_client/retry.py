"""When to retry: a 429 (queue full) or 503 (loading, draining, overloaded) means the request
was not run, so sending it again is safe; the server says how long to wait in ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts``: how many times a request is sent at most (1: never retried).
    ``backoff_seconds``: the first wait when the server gives no ``Retry-After``, doubled at
    each retry. ``max_wait_seconds``: a longer ``Retry-After`` is not waited for; the error is
    raised at once (the caller's deadline is better judged by the caller)."""

    attempts: int = 3
    backoff_seconds: float = 0.1
    max_wait_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff_seconds < 0 or self.max_wait_seconds < 0:
            raise ValueError("backoff_seconds and max_wait_seconds must not be negative")

    def wait_seconds(self, status_code: int, retry_after: str | None, attempt: int) -> float | None:
        """Seconds to wait before sending again after ``attempt`` (1, 2, ...) was answered
        ``status_code``; None: do not retry."""
        if status_code not in RETRY_STATUSES or attempt >= self.attempts:
            return None
        wait = parse_retry_after(retry_after)
        if wait is None:
            wait = self.backoff_seconds * 2 ** (attempt - 1)
        return wait if wait <= self.max_wait_seconds else None


NO_RETRY = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` value: delay-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
