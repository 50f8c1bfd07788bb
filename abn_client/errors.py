"""The one exception a refused request raises, with everything the server said about it."""

from __future__ import annotations

import httpx


class RequestFailed(Exception):
    """The server answered with an error status (after any retries).

    ``error_type`` is the server's stable identifier (``invalid_budget``, ``queue_full``,
    ...; docs/api.md, Errors), ``message`` what was wrong and what is allowed."""

    def __init__(
        self,
        status_code: int,
        error_type: str,
        message: str,
        request_id: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(f"{status_code} {error_type}: {message}")
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> RequestFailed:
        """From an error response; a body that is not the service's error shape (a proxy's
        page, say) becomes ``error_type`` ``http_error`` with the start of its text."""
        error_type, message = "http_error", response.text[:200]
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            message = body["error"]
            error_type = str(body.get("error_type", error_type))
        return cls(
            response.status_code,
            error_type,
            message,
            response.headers.get("x-request-id"),
            response.headers.get("retry-after"),
        )
