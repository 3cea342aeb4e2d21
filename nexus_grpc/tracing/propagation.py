"""W3C trace context (traceparent, tracestate) and baggage in and out of carriers.

Carriers are plain ``dict[str, str]`` with lower-case keys: gRPC metadata, HTTP
headers, in-process call metadata and event envelopes all convert to that. The global
propagator is used, so ``OTEL_PROPAGATORS`` is honoured (default: tracecontext,baggage):
the keys read from incoming metadata and headers are the W3C ones plus every field the
configured propagator names (``b3``, ``x-b3-traceid``, ``uber-trace-id``...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import propagate
from opentelemetry.context import Context

__all__ = ["PROPAGATION_KEYS", "extract", "extract_pairs", "inject", "propagation_keys"]

#: The carrier keys the default propagators read and write.
PROPAGATION_KEYS = frozenset({"traceparent", "tracestate", "baggage"})

# (propagator, its keys): the fields are read once per global propagator, not per call.
_keys_of: tuple[object, frozenset[str]] = (None, PROPAGATION_KEYS)


def propagation_keys() -> frozenset[str]:
    """The carrier keys to pass on: the W3C ones and the configured propagator's fields."""
    global _keys_of
    textmap = propagate.get_global_textmap()
    if _keys_of[0] is not textmap:
        fields = frozenset(str(field).lower() for field in textmap.fields)
        _keys_of = (textmap, PROPAGATION_KEYS | fields)
    return _keys_of[1]


def inject(carrier: dict[str, str], context: Context | None = None) -> None:
    """Write the current (or ``context``'s) span context and baggage into ``carrier``."""
    propagate.inject(carrier, context=context)


def extract(carrier: Mapping[str, str], context: Context | None = None) -> Context:
    """The context described by ``carrier`` (on top of ``context``, default: empty)."""
    return propagate.extract(carrier, context=context if context is not None else Context())


def extract_pairs(pairs: Iterable[tuple[str, object]] | None) -> Context:
    """:func:`extract` from gRPC-style metadata pairs, keeping only :func:`propagation_keys`.

    Non-string values (binary ``-bin`` metadata) and unrelated keys are skipped, so a
    call without trace headers costs one pass over its metadata.
    """
    keys = propagation_keys()
    carrier: dict[str, str] = {}
    for key, value in pairs or ():
        if key in keys and isinstance(value, str):
            carrier[key] = value
    return extract(carrier)
