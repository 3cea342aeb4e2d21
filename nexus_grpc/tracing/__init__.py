"""OpenTelemetry tracing for nexus: the switch, the tracer and W3C context helpers.

Tracing is off by default. Every instrumentation point asks :func:`enabled` (a module
flag read, no call into OpenTelemetry) or is bound only when it is on, so that with
tracing off nothing changes per call. The host turns it on at start from the
``[tracing]`` config and the standard ``OTEL_*`` variables (:mod:`.setup`), which needs
the SDK and exporters of the ``nexus-grpc[otel]`` extra; this package itself needs only
``opentelemetry-api``.
"""

from __future__ import annotations

from nexus_grpc.tracing._state import enabled, tracer
from nexus_grpc.tracing.propagation import extract, inject

__all__ = ["enabled", "extract", "inject", "tracer"]
