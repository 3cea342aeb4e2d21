"""Lookups in the finished spans of an in-memory exporter."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind


def of_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    """The finished spans of ``kind``, in the order they ended."""
    return [span for span in exporter.get_finished_spans() if span.kind is kind]


def parent_id(span: ReadableSpan) -> int | None:
    """The span id of ``span``'s parent, or None for a root."""
    return span.parent.span_id if span.parent is not None else None
