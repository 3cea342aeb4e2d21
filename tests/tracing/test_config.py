"""[tracing] and the OTEL_* variables: defaults, precedence, errors, SDK start and stop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)

from nexus_grpc import tracing
from nexus_grpc.config import ConfigError, TracingConfig, load_config
from nexus_grpc.tracing.setup import (
    _endpoint_shown,
    _resource_attributes,
    _sampler,
    _traces_url,
    start_tracing,
)


def load(tmp_path: Path, toml: str = "", **env: str) -> TracingConfig:
    path = tmp_path / "nexus.toml"
    path.write_text(toml)
    return load_config(path, environ=env).tracing


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config == TracingConfig()
    assert not config.enabled
    assert start_tracing(config) is None
    assert not tracing.enabled()


def test_the_toml_section_configures_everything(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
[tracing]
enabled = true
exporter = "otlp"
endpoint = "http://collector:4318"
protocol = "http/protobuf"
headers = ["api-key=s3cret"]
timeout = 3.0
service_name = "shop"
resource_attributes = ["deployment.environment.name=prod"]
sampler = "parentbased_traceidratio"
sampler_arg = 0.25
""",
    )
    assert config.enabled and config.protocol == "http/protobuf"
    assert _traces_url(config) == "http://collector:4318/v1/traces"
    assert config.headers == ("api-key=s3cret",)
    sampler = _sampler(config)
    assert isinstance(sampler, ParentBased)
    assert "TraceIdRatioBased{0.25}" in sampler.get_description()
    attributes = _resource_attributes(config)
    assert attributes["service.name"] == "shop"
    assert attributes["deployment.environment.name"] == "prod"
    assert attributes["service.instance.id"]


def test_otel_variables_win_over_the_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[tracing]\nendpoint = "http://file:4317"\nservice_name = "from-file"\nsampler = "always_off"\n',
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://env:4317",
        OTEL_SERVICE_NAME="from-env",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.5",
        OTEL_RESOURCE_ATTRIBUTES="team=payments,region=eu%2Dwest",
        OTEL_EXPORTER_OTLP_TIMEOUT="2500",
        OTEL_EXPORTER_OTLP_HEADERS="a=1,b=2",
        NEXUS_TRACING__SERVICE_NAME="from-nexus-env",
    )
    assert config.enabled and config.exporter == "otlp"
    assert config.endpoint == "http://env:4317"
    assert _traces_url(config) == "http://env:4317"
    assert config.service_name == "from-env"
    assert isinstance(_sampler(config), TraceIdRatioBased)
    assert config.sampler_arg == 0.5
    assert config.timeout == 2.5
    assert config.headers == ("a=1", "b=2")
    assert _resource_attributes(config)["region"] == "eu-west"


def test_signal_specific_variables_win_over_the_general_ones(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://base:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://traces:9999/custom",
    )
    assert config.protocol == "http/protobuf"
    assert _traces_url(config) == "http://traces:9999/custom"


def test_default_endpoints_follow_the_protocol() -> None:
    assert _traces_url(TracingConfig()) == "http://localhost:4317"
    assert _traces_url(TracingConfig(protocol="http/protobuf")) == "http://localhost:4318/v1/traces"


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SDK_DISABLED": "TRUE", "NEXUS_TRACING__ENABLED": "true"}, False),
        ({"OTEL_SDK_DISABLED": "false", "NEXUS_TRACING__ENABLED": "true"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, False),
        ({"OTEL_TRACES_EXPORTER": ""}, False),
    ],
)
def test_what_turns_tracing_on_and_off(tmp_path: Path, env: dict[str, str], enabled: bool) -> None:
    assert load(tmp_path, **env).enabled is enabled


def test_samplers() -> None:
    assert _sampler(TracingConfig(sampler="always_on")) is ALWAYS_ON
    assert _sampler(TracingConfig(sampler="always_off")) is ALWAYS_OFF
    assert isinstance(_sampler(TracingConfig()), ParentBased)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        (
            "",
            {"OTEL_TRACES_SAMPLER": "jaeger_remote"},
            r"tracing\.sampler \(from OTEL_TRACES_SAMPLER\)",
        ),
        ("", {"OTEL_TRACES_EXPORTER": "otlp,console"}, "one exporter"),
        (
            "",
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            r"tracing\.exporter \(from OTEL_TRACES_EXPORTER\)",
        ),
        ("", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "grpc, http/protobuf"),
        (
            "",
            {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
            "OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds",
        ),
        ("", {"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED: expected true or false"),
        ("", {"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "sampler_arg: expected a fraction"),
        (
            "",
            {"OTEL_EXPORTER_OTLP_HEADERS": "novalue"},
            'tracing.headers: entry 1 is not "key=value"',
        ),
        (
            "",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"},
            "expected an http:// or https:// URL",
        ),
        ("[tracing]\nenabeld = true\n", {}, r"unknown config key tracing\.enabeld"),
        ('[tracing]\nresource_attributes = ["=x"]\n', {}, "tracing.resource_attributes"),
    ],
)
def test_bad_values_are_clear_errors(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, toml, **env)


def test_unknown_otel_variables_are_not_errors(tmp_path: Path) -> None:
    # They belong to the SDK (OTEL_BSP_*) or to other tools in the same environment.
    assert not load(tmp_path, OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SOMETHING_ELSE="x").enabled


def test_start_and_shutdown_turn_tracing_on_and_off() -> None:
    started = start_tracing(TracingConfig(enabled=True, exporter="console"))
    assert started is not None
    try:
        assert tracing.enabled()
        with tracing.tracer().start_as_current_span("probe") as span:
            assert span.is_recording()
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
        assert carrier["traceparent"].split("-")[2] == format(
            span.get_span_context().span_id, "016x"
        )
    finally:
        # Flushes: the console exporter writes the span to stdout (captured by pytest).
        started.shutdown()
    assert not tracing.enabled()


def test_an_exporter_of_a_missing_extra_is_a_start_up_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if nexus-grpc[otel] was not installed: importing the SDK fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"pip install 'nexus-grpc\[otel\]'"):
        start_tracing(TracingConfig(enabled=True))
    assert not tracing.enabled()


def test_extract_ignores_what_is_not_trace_context() -> None:
    from opentelemetry import trace

    from nexus_grpc.tracing.propagation import extract_pairs

    context = extract_pairs(
        [("authorization", "Bearer x"), ("traceparent", "garbage"), ("bin-bin", b"\x00")]
    )
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_a_service_name_in_the_resource_attributes_is_kept(tmp_path: Path) -> None:
    attributes = "service.name=checkout,deployment.environment.name=prod"
    config = load(tmp_path, OTEL_TRACES_EXPORTER="console", OTEL_RESOURCE_ATTRIBUTES=attributes)
    assert _resource_attributes(config)["service.name"] == "checkout"
    named = load(
        tmp_path,
        OTEL_TRACES_EXPORTER="console",
        OTEL_RESOURCE_ATTRIBUTES=attributes,
        OTEL_SERVICE_NAME="shop",
    )
    assert _resource_attributes(named)["service.name"] == "shop"  # the name variable wins
    plain = load(tmp_path, OTEL_TRACES_EXPORTER="console")
    assert _resource_attributes(plain)["service.name"] == "nexus"


def test_an_otel_endpoint_variable_beats_the_files_traces_endpoint(tmp_path: Path) -> None:
    toml = '[tracing]\ntraces_endpoint = "http://file:4318/v1/traces"\nprotocol = "http/protobuf"\n'
    config = load(
        tmp_path, toml, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT="http://env:4318"
    )
    assert _traces_url(config) == "http://env:4318/v1/traces"
    assert _traces_url(load(tmp_path, toml, OTEL_TRACES_EXPORTER="otlp")) == (
        "http://file:4318/v1/traces"
    )


def test_a_malformed_header_entry_is_named_by_position_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, OTEL_EXPORTER_OTLP_HEADERS="a=1,Bearer s3cret-token")
    assert "entry 2" in str(error.value)
    assert "s3cret" not in str(error.value)


def test_the_logged_endpoint_has_no_credentials_nor_query_string() -> None:
    config = TracingConfig(
        enabled=True,
        protocol="http/protobuf",
        traces_endpoint="https://user:pw@otlp.example:4318/v1/traces?api-key=s3cret#x",
    )
    assert _endpoint_shown(config) == "https://otlp.example:4318/v1/traces"
