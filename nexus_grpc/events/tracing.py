"""Spans of domain events, after the OpenTelemetry messaging conventions.

Publishing is a PRODUCER span ``publish <type>`` whose context is written into the
envelope's ``trace_context`` (W3C traceparent, tracestate, baggage), so it travels with
the event through the bus and through the outbox (the envelope is stored whole).

Handling is a CONSUMER span ``process <type>`` per handler run (each retry its own),
with a span link to the publishing context, as the conventions recommend, and that
context as its parent too: the whole flow of one request, across processes, is one
trace. An event published without a trace context gets a root span.

The attempt number is nexus's own attribute ``nexus.event.delivery_attempt`` (1 for the
first delivery): the conventions have only broker-specific ones.

Both functions are used only when :func:`nexus_grpc.tracing.enabled`; with tracing off
the buses and the publisher call nothing here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from nexus_grpc import tracing
from nexus_grpc.errors import StatusError
from nexus_grpc.events.envelope import Envelope

if TYPE_CHECKING:  # the bus imports this module
    from nexus_grpc.events.bus import Delivery, Handler

__all__ = ["ATTEMPT_ATTRIBUTE", "SYSTEM_PREFIX", "publishing", "traced_handler"]

#: The attempt number of a handler run (1 = first delivery).
ATTEMPT_ATTRIBUTE = "nexus.event.delivery_attempt"
#: ``messaging.system`` is this plus the bus backend: "nexus.memory" or "nexus.redis".
#: Not plain "redis": Redis has no messaging system name in the conventions, and the
#: envelope, groups and retries are nexus's own protocol on top of Redis Streams.
SYSTEM_PREFIX = "nexus."


def _system(backend: str) -> str:
    return SYSTEM_PREFIX + backend


@contextmanager
def publishing(envelope: Envelope, *, backend: str) -> Iterator[Span]:
    """A PRODUCER span around handing ``envelope`` over (to the bus or the outbox),
    current inside the block; its context is injected into ``envelope.trace_context``."""
    attributes = {
        "messaging.system": _system(backend),
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": envelope.type,
        "messaging.message.id": envelope.id,
        "nexus.event.source": envelope.source,
    }
    with tracing.tracer().start_as_current_span(
        f"publish {envelope.type}",
        kind=SpanKind.PRODUCER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        carrier: dict[str, str] = {}
        tracing.inject(carrier)
        envelope.trace_context.clear()
        envelope.trace_context.update(carrier)
        try:
            yield span
        except Exception as error:
            _failed(span, error)
            raise


def traced_handler(handler: Handler, *, backend: str) -> Handler:
    """``handler`` run inside a CONSUMER span linked to (and child of) the publish."""
    system = _system(backend)

    async def traced(event: Message, delivery: Delivery) -> None:
        envelope = delivery.envelope
        parent = tracing.extract(dict(envelope.trace_context))
        published = trace.get_current_span(parent).get_span_context()
        links = [Link(published)] if published.is_valid else []
        attributes: dict[str, AttributeValue] = {
            "messaging.system": system,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": envelope.type,
            "messaging.message.id": envelope.id,
            "messaging.consumer.group.name": delivery.group,
            ATTEMPT_ATTRIBUTE: delivery.attempt,
            "nexus.event.source": envelope.source,
        }
        with tracing.tracer().start_as_current_span(
            f"process {envelope.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await handler(event, delivery)
            except Exception as error:  # a cancelled handler is not an error
                _failed(span, error)
                raise

    return traced


def _failed(span: Span, error: Exception) -> None:
    # The class (or the status a plugin chose to say), never the message of an
    # unexpected error: it may hold data, and spans leave the host. The log line of the
    # failure has it, with this span's trace id.
    described = type(error).__name__
    if isinstance(error, StatusError):
        described = str(error)  # "CODE: message", as the plugin wrote it
    span.set_status(Status(StatusCode.ERROR, described))
    span.set_attribute("error.type", type(error).__qualname__)
