"""CLIENT spans of MongoDB commands, from PyMongo's command monitoring.

PyMongo calls the listener in the task that sends the command, so each span is a child
of that task's current span (none is made outside traced work: see ``spans``). A span
holds the command name, collection, database and server, never the command document:
filters and updates hold user data.
"""

from __future__ import annotations

from opentelemetry.trace import Span
from pymongo import monitoring

from .spans import fail, in_traced_work, start_client_span

__all__ = ["CommandSpans"]

#: Commands of the connection handshake and monitoring, not of any operation.
_SKIPPED = frozenset({"hello", "ismaster", "isMaster"})


class CommandSpans(monitoring.CommandListener):
    """One span per command, from its start to its success or failure."""

    def __init__(self) -> None:
        self._spans: dict[tuple[object, int], Span] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Start the command's span."""
        name = event.command_name
        if name in _SKIPPED or not in_traced_work():
            return
        target = event.command.get("collection" if name == "getMore" else name)
        host, port = event.connection_id
        self._spans[(event.connection_id, event.request_id)] = start_client_span(
            "mongodb",
            name,
            collection=target if isinstance(target, str) else None,
            namespace=event.database_name,
            server=(str(host), port if isinstance(port, int) else None),
        )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """End the command's span."""
        span = self._spans.pop((event.connection_id, event.request_id), None)
        if span is not None:
            span.end()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """End the command's span as failed, with the server's error name."""
        span = self._spans.pop((event.connection_id, event.request_id), None)
        if span is None:
            return
        code = event.failure.get("codeName") or event.failure.get("code") or "_OTHER"
        fail(span, f"command {event.command_name} failed: {code}", str(code))
        span.end()
