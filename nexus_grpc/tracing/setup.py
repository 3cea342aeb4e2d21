"""Start and stop the OpenTelemetry SDK for a host: provider, sampler, exporter.

The SDK and the OTLP exporters come with the ``nexus-grpc[otel]`` extra and are imported
only when tracing is on, so a host without tracing never loads them.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry import trace

from nexus_grpc.config import ConfigError, TracingConfig
from nexus_grpc.tracing._state import INSTRUMENTATION_SCOPE, set_tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = ["Tracing", "start_tracing"]

_log = logging.getLogger("nexus.tracing")

#: service.name when neither service_name nor the resource attributes give one.
DEFAULT_SERVICE_NAME = "nexus"

_EXTRA_HINT = "install the extra: pip install 'nexus-grpc[otel]'"


class Tracing:
    """The SDK pieces one host set up; :meth:`shutdown` flushes and stops them."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider

    def shutdown(self) -> None:
        """Export what is still queued (bounded by the exporter's timeout), then stop.

        Blocks: call it in a thread from async code.
        """
        set_tracer(None)
        self.provider.shutdown()


def start_tracing(config: TracingConfig) -> Tracing | None:
    """Turn tracing on as ``config`` says, or return None when it is off.

    Raises ConfigError when tracing is on but the SDK or the exporter it needs is not
    installed, naming the extra to install.
    """
    if not config.enabled or config.exporter == "none":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise ConfigError(
            f"tracing is on but the OpenTelemetry SDK is missing ({error.name}): {_EXTRA_HINT}"
        ) from None
    provider = TracerProvider(
        resource=Resource.create(_resource_attributes(config)),
        sampler=_sampler(config),
    )
    # The batch processor reads OTEL_BSP_* (queue size, delay, batch size) itself.
    provider.add_span_processor(BatchSpanProcessor(_exporter(config)))
    install(provider)
    _log.info(
        "tracing on: %s exporter%s, sampler %s",
        config.exporter,
        f" ({config.protocol} to {_endpoint_shown(config)})" if config.exporter == "otlp" else "",
        config.sampler,
        extra={"service_name": provider.resource.attributes.get("service.name")},
    )
    return Tracing(provider)


def install(provider: Any) -> None:
    """Make ``provider``'s "nexus" tracer the one nexus uses, and tracing on.

    The first provider of the process also becomes OpenTelemetry's global one, so
    libraries a plugin instruments itself report into the same traces; later ones (a
    test starting several hosts) do not replace it, as the API allows one only.
    """
    set_tracer(provider.get_tracer(INSTRUMENTATION_SCOPE))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def _pairs(entries: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        # As in OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS: URL-encoded values.
        pairs[key.strip()] = unquote(value.strip())
    return pairs


def _resource_attributes(config: TracingConfig) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        # Tells the spans of two processes of one service apart (the events consumer in
        # another instance, say); a configured one wins.
        "service.instance.id": str(uuid.uuid4()),
        "process.pid": os.getpid(),
    }
    attributes.update(_pairs(config.resource_attributes))
    # As the specification has it: OTEL_SERVICE_NAME (or a configured service_name)
    # beats a service.name in the resource attributes, which beats the default.
    if config.service_name:
        attributes["service.name"] = config.service_name
    elif not attributes.get("service.name"):
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    return attributes


def _sampler(config: TracingConfig) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    name = config.sampler
    ratio = config.sampler_arg
    base: Sampler
    inner = name.removeprefix("parentbased_")
    if inner == "always_on":
        base = sampling.ALWAYS_ON
    elif inner == "always_off":
        base = sampling.ALWAYS_OFF
    else:
        base = sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBased(base) if name.startswith("parentbased_") else base


def _traces_url(config: TracingConfig) -> str:
    if config.traces_endpoint:
        return config.traces_endpoint
    if config.protocol == "grpc":
        return config.endpoint or "http://localhost:4317"
    base = config.endpoint or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def _endpoint_shown(config: TracingConfig) -> str:
    # Never credentials in a log line: the URL's user-info part, its query string and
    # fragment (an API key some backends take as ?api-key=...) are dropped.
    url = _traces_url(config).split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2]


def _exporter(config: TracingConfig) -> SpanExporter:
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=_resource_attributes(config)["service.name"])
    headers = _pairs(config.headers) or None
    url = _traces_url(config)
    try:
        if config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            # http:// means plaintext, https:// TLS (OTEL_EXPORTER_OTLP_CERTIFICATE for a
            # private CA, read by the exporter itself).
            return GrpcExporter(
                endpoint=url,
                insecure=url.startswith("http://"),
                headers=headers,
                timeout=config.timeout,
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=url, headers=headers, timeout=config.timeout)
    except ImportError as error:
        raise ConfigError(
            f"tracing.protocol {config.protocol}: the OTLP exporter is missing "
            f"({error.name}): {_EXTRA_HINT}"
        ) from None
