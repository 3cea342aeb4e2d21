"""W3C trace context (traceparent, tracestate) and baggage in and out of carriers.

Carriers are plain ``dict[str, str]`` with lower-case keys: gRPC metadata, HTTP
headers, in-process call metadata and event envelopes all convert to that. The global
propagator is used, so ``OTEL_PROPAGATORS`` is honoured (default: tracecontext,baggage).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import propagate
from opentelemetry.context import Context

__all__ = ["PROPAGATION_KEYS", "extract", "extract_pairs", "inject"]

#: The carrier keys the default propagators read and write.
PROPAGATION_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


def inject(carrier: dict[str, str], context: Context | None = None) -> None:
    """Write the current (or ``context``'s) span context and baggage into ``carrier``."""
    propagate.inject(carrier, context=context)


def extract(carrier: Mapping[str, str], context: Context | None = None) -> Context:
    """The context described by ``carrier`` (on top of ``context``, default: empty)."""
    return propagate.extract(carrier, context=context if context is not None else Context())


def extract_pairs(pairs: Iterable[tuple[str, object]] | None) -> Context:
    """:func:`extract` from gRPC-style metadata pairs, keeping only the W3C keys.

    Non-string values (binary ``-bin`` metadata) and unrelated keys are skipped, so a
    call without trace headers costs one pass over its metadata.
    """
    carrier: dict[str, str] = {}
    for key, value in pairs or ():
        if key in PROPAGATION_KEYS and isinstance(value, str):
            carrier[key] = value
    return extract(carrier)
