"""Tracing switched on with an in-memory exporter, for tests of nexus's spans."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from nexus_grpc.tracing._state import INSTRUMENTATION_SCOPE, set_tracer


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Tracing on (spans exported at once, in memory) for the block, off afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    set_tracer(provider.get_tracer(INSTRUMENTATION_SCOPE))
    try:
        yield exporter
    finally:
        set_tracer(None)
        provider.shutdown()


def of_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    """The finished spans of ``kind``, in the order they ended."""
    return [span for span in exporter.get_finished_spans() if span.kind is kind]


def parent_id(span: ReadableSpan) -> int | None:
    """The span id of ``span``'s parent, or None for a root."""
    return span.parent.span_id if span.parent is not None else None
