"""Structured logging: one JSON object per line, or readable text on a terminal.

The request id of the call being handled lives in a context variable, so every log
line written while serving a call carries it without the handler passing it around.
With tracing on, records written while a span is active also carry its ``trace_id``
and ``span_id``. In a worker of several (``nexus serve --workers N``) every record
carries the worker's ``pid`` and ``worker`` (its slot, 0 to N-1), so the interleaved
lines of the workers can be told apart.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from opentelemetry import trace

from nexus_grpc.tracing import _state as _tracing_state

__all__ = ["WorkerFields", "configure_logging", "current_request_id", "request_id_var"]

#: Request id of the call being served by the current task ("" outside calls).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("nexus_request_id", default="")

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is
# emitted as a field of its own.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def current_request_id() -> str:
    """The request id of the call being served, or "" outside a call."""
    return request_id_var.get()


def _install_record_factory() -> None:
    # A record factory (rather than a handler filter) stamps the request id on every
    # record, whichever handler ends up formatting it: ours, pytest's, an embedder's.
    previous = logging.getLogRecordFactory()
    if getattr(previous, "nexus_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id_var.get()
        if _tracing_state._enabled:
            _stamp_trace(record)
        return record

    factory.nexus_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _stamp_trace(record: logging.LogRecord) -> None:
    # The active span's ids, spelled as OTLP/W3C spell them (lower-case hex), so a log
    # line leads to its trace in Jaeger or Tempo and back.
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        record.trace_id = format(context.trace_id, "032x")
        record.span_id = format(context.span_id, "016x")


_install_record_factory()


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and value not in ("", None):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable single-line format with the extra fields as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and value not in ("", None)
        )
        line = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
            f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class WorkerFields(logging.Filter):
    """Adds ``pid`` and ``worker`` (the slot) to every record a worker writes; a
    record that names a ``pid`` of its own keeps it."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot = slot

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drops one."""
        if getattr(record, "pid", None) is None:
            record.pid = os.getpid()
        record.worker = self.slot
        return True


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    worker: int | None = None,
) -> None:
    """Route the root logger to ``stream`` (stderr) in the chosen format; ``worker``,
    this process's slot when it is one of several workers."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "text" if out.isatty() else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(WorkerFields(worker))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpcio and asyncio are chatty at debug level and say nothing a host operator needs.
    for noisy in ("asyncio", "grpc._cython.cygrpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
