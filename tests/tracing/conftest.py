"""Tracing tests: an SDK provider exporting into memory, installed as nexus's tracer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nexus_grpc.tracing._state import set_tracer
from nexus_grpc.tracing.setup import install


class Spans:
    """The finished spans of the test, with lookups by name."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def all(self) -> tuple[ReadableSpan, ...]:
        """Every span finished so far."""
        return tuple(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``."""
        return [span for span in self.all() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        """The only finished span called ``name``."""
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name}: {[s.name for s in self.all()]}"
        return found[0]

    async def ended(self, name: str) -> ReadableSpan:
        """The only span called ``name``, once it has ended (waits up to 10 s).

        A call the pipeline refuses gets its status (``context.abort``) before the server
        span around it ends, so a caller in the host's event loop can see the refusal
        first; under load it often does.
        """
        for _ in range(1000):  # bounded: 1000 x 10 ms
            if self.named(name):
                break
            await asyncio.sleep(0.01)
        return self.one(name)

    def clear(self) -> None:
        """Forget the spans finished so far."""
        self.exporter.clear()


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Tracing on for the test, every span kept in memory (exported as it ends)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install(provider)
    try:
        yield Spans(exporter)
    finally:
        set_tracer(None)
        provider.shutdown()
