"""CLIENT spans of database commands, after the OpenTelemetry database conventions.

One span per statement or command sent to a server (SQLite, PostgreSQL, MongoDB,
Redis), a child of the span current when it was sent: ``db.system.name``,
``db.operation.name``, ``db.collection.name``, ``db.namespace``, ``server.address`` and
``server.port`` where there is a server. ``db.query.text`` is the SQL with its
placeholders (``?``, ``$1``) and never a bound value; MongoDB and Redis spans carry no
query text at all (a filter or a key holds user data), only the command name.

Spans are made only inside a recording span (a call, an event handler, a publish):
the host's background work (the outbox relay's sweep every second, inbox pruning,
health probes) would otherwise start a trace of its own every few seconds, burying
the traces of requests. Everything here is installed only when
:func:`nexus_grpc.tracing.enabled` at the time the engine or client is created: with
tracing off no listener exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection, ExceptionContext, ExecutionContext

from nexus_grpc import tracing

__all__ = [
    "client_span",
    "fail",
    "in_traced_work",
    "instrument_sql_engine",
    "server_of_redis",
    "sql_operation",
    "sql_table",
    "start_client_span",
]

#: Attribute of a SQLAlchemy execution context holding its statement's span.
_SPAN_KEY = "_nexus_span"

Server = tuple[str, int | None]


def _attributes(
    system: str,
    operation: str,
    *,
    collection: str | None,
    namespace: str | None,
    server: Server | None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {"db.system.name": system, "db.operation.name": operation}
    if collection:
        attributes["db.collection.name"] = collection
    if namespace:
        attributes["db.namespace"] = namespace
    if server is not None:
        attributes["server.address"] = server[0]
        if server[1] is not None:
            attributes["server.port"] = server[1]
    return attributes


def _span_name(system: str, operation: str, collection: str | None) -> str:
    # The conventions' "{db.operation.name} {target}", else the system name.
    if operation and collection:
        return f"{operation} {collection}"
    return operation or system


def in_traced_work() -> bool:
    """Whether a recording span is current: only then are command spans made."""
    return trace.get_current_span().is_recording()


def start_client_span(
    system: str,
    operation: str,
    *,
    collection: str | None = None,
    namespace: str | None = None,
    server: Server | None = None,
    query: str | None = None,
) -> Span:
    """Start (not make current) a CLIENT span for one database command."""
    attributes = _attributes(
        system, operation, collection=collection, namespace=namespace, server=server
    )
    if query:
        attributes["db.query.text"] = query
    return tracing.tracer().start_span(
        _span_name(system, operation, collection), kind=SpanKind.CLIENT, attributes=attributes
    )


def fail(span: Span, error: BaseException | str, error_type: str | None = None) -> None:
    """Mark ``span`` failed with ``error`` (an exception, or a server's error text).

    An exception is described by its class name only, and never recorded as a span
    event: a driver's message may quote the command it failed on (redis-py's pipeline
    errors hold ``SET <key> <value> PX ...``), i.e. keys and values of user data.
    """
    if isinstance(error, BaseException):
        error_type = error_type or type(error).__qualname__
        description = type(error).__name__
    else:
        description = error
    span.set_attribute("error.type", error_type or "_OTHER")
    span.set_status(Status(StatusCode.ERROR, description))


@contextmanager
def client_span(
    system: str,
    operation: str,
    *,
    collection: str | None = None,
    namespace: str | None = None,
    server: Server | None = None,
    query: str | None = None,
) -> Iterator[Span | None]:
    """A CLIENT span around one database command, failed when the block raises; no
    span (None) outside traced work."""
    if not in_traced_work():
        yield None
        return
    span = start_client_span(
        system, operation, collection=collection, namespace=namespace, server=server, query=query
    )
    try:
        yield span
    except Exception as error:
        fail(span, error)
        raise
    finally:
        span.end()


# -- SQL (SQLAlchemy engines) ---------------------------------------------------------


def sql_operation(statement: str) -> str:
    """The first keyword of ``statement``, upper-cased: SELECT, INSERT, BEGIN, ..."""
    head = statement.lstrip().split(None, 1)
    return head[0].upper() if head else ""


#: The table a statement names first: SELECT/DELETE ... FROM t, INSERT INTO t, UPDATE t.
_TABLE = re.compile(r'(?:\bFROM|\bINTO|^\s*UPDATE)\s+"?([A-Za-z_][\w.]*)', re.IGNORECASE)


def sql_table(statement: str) -> str | None:
    """The table ``statement`` names first, or None (``SELECT 1``, BEGIN, a lock).

    Read from the SQL text: walking the compiled statement's FROM list costs hundreds
    of microseconds per statement, a regular expression a microsecond or two.
    """
    found = _TABLE.search(statement)
    return found.group(1) if found else None


def instrument_sql_engine(
    engine: Engine, *, system: str, namespace: str | None, server: Server | None
) -> None:
    """Give every statement ``engine`` runs a CLIENT span (children of the current span).

    The listeners run where the statement runs: on the SQLite driver's threads (which
    carry the caller's context: see ``_sqlite``) or in the greenlet SQLAlchemy's async
    engine runs asyncpg in (which inherits the task's context).
    """

    @event.listens_for(engine, "before_cursor_execute")
    def _before(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        if context is None or not in_traced_work():
            return
        span = start_client_span(
            system,
            sql_operation(statement),
            collection=sql_table(statement),
            namespace=namespace,
            server=server,
            query=statement,  # placeholders only: the values travel as ``parameters``
        )
        setattr(context, _SPAN_KEY, span)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        span: Span | None = getattr(context, _SPAN_KEY, None)
        if span is not None:
            setattr(context, _SPAN_KEY, None)
            span.end()

    @event.listens_for(engine, "handle_error")
    def _error(exception_context: ExceptionContext) -> None:
        context = exception_context.execution_context
        span: Span | None = getattr(context, _SPAN_KEY, None)
        if span is None:
            return
        setattr(context, _SPAN_KEY, None)
        original = exception_context.original_exception
        # The driver's class and code only: its message may quote the statement's values.
        code = getattr(original, "sqlstate", None) or getattr(original, "sqlite_errorname", None)
        if isinstance(code, str):
            span.set_attribute("db.response.status_code", code)
        name = type(original).__name__
        fail(span, f"{name} {code}" if isinstance(code, str) else name, name)
        span.end()


# -- Redis ----------------------------------------------------------------------------


def server_of_redis(client: Any) -> Server | None:
    """(host, port) a redis-py client connects to, or None (a Unix socket)."""
    kwargs: Mapping[str, Any] = getattr(client.connection_pool, "connection_kwargs", {})
    host = kwargs.get("host")
    if not isinstance(host, str):
        return None
    port = kwargs.get("port")
    return host, port if isinstance(port, int) else None
