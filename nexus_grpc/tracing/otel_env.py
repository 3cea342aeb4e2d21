"""The standard ``OTEL_*`` environment variables, as ``[tracing]`` config keys.

The OpenTelemetry specification has the SDK configured by these variables, and
platforms (the OpenTelemetry Operator, hosted collectors' install guides) set them, so
they win over ``nexus.toml`` and ``NEXUS_TRACING__*``. Tracing is on when
``tracing.enabled`` is true or ``OTEL_TRACES_EXPORTER`` names an exporter;
``OTEL_TRACES_EXPORTER=none`` and ``OTEL_SDK_DISABLED=true`` turn it off whatever else
says. Variables the SDK reads by itself (``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_CERTIFICATE``,
``OTEL_EXPORTER_OTLP_COMPRESSION``, ``OTEL_PROPAGATORS``, ...) keep working unchanged.
Unlike ``NEXUS_*`` names, unknown ``OTEL_*`` names are not errors: they belong to the
OpenTelemetry SDK and other tools in the same environment.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["otel_overrides"]

# Variable → [tracing] key, in increasing precedence: the signal-specific variables
# (…_TRACES_…) come after the general ones and replace them.
_PLAIN: tuple[tuple[str, str], ...] = (
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "endpoint"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "traces_endpoint"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "protocol"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "protocol"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "headers"),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "headers"),
    ("OTEL_SERVICE_NAME", "service_name"),
    ("OTEL_RESOURCE_ATTRIBUTES", "resource_attributes"),
    ("OTEL_TRACES_SAMPLER", "sampler"),
    ("OTEL_TRACES_SAMPLER_ARG", "sampler_arg"),
)
# Milliseconds in the variables, seconds in [tracing].
_TIMEOUTS = ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")


def otel_overrides(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``[tracing]`` key → (variable, text) for the ``OTEL_*`` variables set in ``env``.

    The texts are parsed and checked like any other config value, and errors name the
    variable. Empty variables count as unset, as the specification says. Raises
    ValueError for a value that cannot be mapped at all.
    """
    found: dict[str, tuple[str, str]] = {}
    for variable, key in _PLAIN:
        text = env.get(variable, "").strip()
        if text:
            found[key] = (variable, text)
    if "endpoint" in found and "traces_endpoint" not in found:
        # The environment wins: a file's (or NEXUS_*'s) full traces URL must not beat
        # the collector OTEL_EXPORTER_OTLP_ENDPOINT names.
        found["traces_endpoint"] = ("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    for variable in _TIMEOUTS:
        text = env.get(variable, "").strip()
        if text:
            try:
                seconds = float(text) / 1000.0
            except ValueError:
                raise ValueError(
                    f"{variable}: expected milliseconds (an integer), got {text!r}"
                ) from None
            found["timeout"] = (variable, repr(seconds))
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        if "," in exporter:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: nexus exports to one exporter, got {exporter!r} "
                "(use an OpenTelemetry collector to fan out)"
            )
        found["exporter"] = ("OTEL_TRACES_EXPORTER", exporter)
        found["enabled"] = ("OTEL_TRACES_EXPORTER", "false" if exporter == "none" else "true")
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower()
    if disabled not in ("", "true", "false"):
        raise ValueError(f"OTEL_SDK_DISABLED: expected true or false, got {disabled!r}")
    if disabled == "true":
        found["enabled"] = ("OTEL_SDK_DISABLED", "false")
    return found
