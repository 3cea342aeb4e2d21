"""The process-wide tracing switch and the nexus tracer.

A plain module global rather than a context variable or a provider lookup: it is read
on hot paths (stage binding, storage statements, publishes) and must cost one
attribute load when tracing is off.
"""

from __future__ import annotations

from opentelemetry import trace

__all__ = ["INSTRUMENTATION_SCOPE", "enabled", "set_tracer", "tracer"]

#: Instrumentation scope name of every span nexus creates.
INSTRUMENTATION_SCOPE = "nexus"

_enabled = False
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    """True when tracing is configured on in this process (False by default)."""
    return _enabled


def tracer() -> trace.Tracer:
    """The nexus tracer (scope "nexus"), from the provider set up at host start.

    With tracing off this is the global API tracer (a no-op unless an embedder installed
    a provider of its own), so calling it is always safe.
    """
    if _tracer is not None:
        return _tracer
    return trace.get_tracer(INSTRUMENTATION_SCOPE)


def set_tracer(value: trace.Tracer | None) -> None:
    """Turn tracing on with ``value`` as the nexus tracer, or off with ``None``.

    Called by :mod:`nexus_grpc.tracing.setup` at host start and stop, and by tests
    that install an in-memory provider.
    """
    global _enabled, _tracer
    _tracer = value
    _enabled = value is not None
