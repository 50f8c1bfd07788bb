"""Every error the service answers, as ``{"error": str, "error_type": str}`` with its status.

Routes raise :class:`ServiceError` (or one of its named subclasses); the handlers installed by
:func:`install_error_handlers` turn it, FastAPI's validation errors and Starlette's 404/405 into
that one JSON shape, so a client parses every failure the same way.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("service")


class ServiceError(Exception):
    """An error with the HTTP status, machine-readable type and message it is answered with."""

    status_code = 500
    error_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.headers = headers or {}


class InvalidImage(ServiceError):
    status_code = 400
    error_type = "invalid_image"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="abn"'})


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"


class Conflict(ServiceError):
    status_code = 409
    error_type = "conflict"


class BodyTimeout(ServiceError):
    """The body had not fully arrived ``ABN_BODY_TIMEOUT_SECONDS`` after the headers."""

    status_code = 408
    error_type = "body_timeout"


class PayloadTooLarge(ServiceError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class Unprocessable(ServiceError):
    status_code = 422
    error_type = "invalid_request"


class QueueFull(ServiceError):
    status_code = 429
    error_type = "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(ServiceError):
    status_code = 503
    error_type = "not_ready"


SHUTTING_DOWN = "the server is shutting down; retry on another instance"


class ShuttingDown(ServiceError):
    """503 while draining. The message defaults to the one every refusal at the door gives
    (engine, front end, state), so a client sees the same words whichever refused it."""

    status_code = 503
    error_type = "shutting_down"

    def __init__(self, message: str = SHUTTING_DOWN) -> None:
        super().__init__(message)


class DeadlineExceeded(ServiceError):
    status_code = 504
    error_type = "deadline_exceeded"


class ClientGone(ClientDisconnect):
    """The client closed its connection while its request waited for the model.

    A :class:`ClientDisconnect` (what Starlette raises when the client leaves during the
    upload), so the middleware treats both alike: status 499, one INFO line, no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer


def error_response(
    status_code: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": message, "error_type": error_type}, status_code=status_code, headers=headers
    )


def service_error_response(exc: ServiceError) -> JSONResponse:
    """How a :class:`ServiceError` is answered, on every route."""
    return error_response(exc.status_code, exc.error_type, exc.message, exc.headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ClientDisconnect):
        raise exc.__cause__  # FastAPI wraps any failure to read a JSON body: the client left
    if exc.status_code == 400 and isinstance(exc.__cause__, ServiceError):
        return await _service_error(request, exc.__cause__)  # e.g. the body's deadline (408)
    if exc.status_code == 400:
        # FastAPI's own 400, raised when a JSON body is not even text (e.g. not UTF-8): the
        # only HTTPException(400) this app can see. It is the same failure as malformed JSON,
        # which FastAPI answers 422, so it is answered as one (and the OpenAPI document, which
        # declares 422 for a body that does not validate, stays true).
        return error_response(
            422, "invalid_request", "the request body cannot be parsed: send JSON in UTF-8"
        )
    error_type = _HTTP_TYPES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, error_type, str(exc.detail), exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
