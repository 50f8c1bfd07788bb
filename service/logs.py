"""Log lines: one format for the whole process (``ABN_LOG_FORMAT``), and the request id in each.

Why a contextvar: a request's lines come from several modules (middleware, routes, errors) and
from uvicorn itself, none of which is handed the request. The request-id middleware sets
:data:`request_id_var` for the task that serves the request; :class:`RequestIdFilter`, on the
one handler, copies it into every record that passes, whichever logger made it. Lines outside
a request (startup, the batcher) carry ``-`` in text and ``null`` in JSON; the batcher names
the request ids of a failed batch in its message.

Why our own access line instead of uvicorn's: uvicorn's knows neither the route template nor
the budget and BitOps; ours is written by the middleware after the response, from what the
route recorded in the ASGI scope (:data:`ACCESS_KEY`).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from typing import IO, Any, Literal

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "abn_request_id", default=None
)

ACCESS_LOGGER = "service.access"
_ACCESS_LOG = logging.getLogger(ACCESS_LOGGER)  # the same object getLogger returns later
ACCESS_KEY = "abn.access"  # scope key: what a route adds to its access line (budget, bitops)
# Keys of every JSON line, in this order; access lines add ACCESS_FIELDS (all of them, null
# where a request has no such value), so a collector can rely on both sets.
BASE_FIELDS = ("time", "level", "logger", "request_id", "message", "exception")
ACCESS_FIELDS = ("method", "route", "path", "status", "latency_ms", "budget", "bitops")
MAX_LOGGED_PATH = 256
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id_text)s] %(message)s"

LogFormat = Literal["text", "json"]


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's id, or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message``: ``-`` when outside a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.request_id_text = getattr(record, "request_id", None) or "-"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: :data:`BASE_FIELDS`, plus :data:`ACCESS_FIELDS` on access
    lines. A traceback goes into ``exception`` as one string, so a line stays one line."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
            "exception": self.formatException(record.exc_info) if record.exc_info else None,
        }
        if record.name == ACCESS_LOGGER:
            out.update({key: getattr(record, key, None) for key in ACCESS_FIELDS})
        return json.dumps(out, default=str)


def make_handler(log_format: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler with the request-id filter and the chosen formatter."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(
    log_format: LogFormat, level: str, stream: IO[str] | None = None
) -> logging.Handler:
    """Make the root logger's only handler one of :func:`make_handler`'s, at ``level``.

    uvicorn is then started with ``log_config=None``: its loggers propagate here instead of
    printing through handlers of their own, so the process writes one format, not two."""
    handler = make_handler(log_format, stream)
    _skip_unused_record_fields()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def _skip_unused_record_fields() -> None:
    """Stop every record from computing what neither format prints: the caller's file and
    line (a walk up the stack), and the thread's and process's names. These are the switches
    of the logging HOWTO's "Optimization" section; a request's access line pays them all."""
    logging._srcfile = None  # type: ignore[attr-defined]  # the HOWTO's switch for findCaller
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def access_line(
    *,
    method: str,
    route: str,
    path: str,
    status: int,
    latency_ms: float,
    budget: float | None,
    bitops: float | None,
) -> None:
    """The one INFO line of a request, at its end (see :data:`ACCESS_FIELDS`)."""
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "path": path[:MAX_LOGGED_PATH],
        "status": status,
        "latency_ms": round(latency_ms, 3),
        "budget": budget,
        "bitops": bitops,
    }
    cost = "" if budget is None else f" budget={budget:.6g}"
    if bitops is not None:
        cost += f" bitops={bitops:.6g}"
    # The text line names the route, not the raw path: the path is the client's (decoded, so
    # it may hold a newline) and unbounded; JSON escapes it and carries both.
    _ACCESS_LOG.info("%s %s %d %.1fms%s", method, route, status, latency_ms, cost, extra=fields)
