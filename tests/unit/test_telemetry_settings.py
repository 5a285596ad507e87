"""Tracing and metrics settings: the standard OTEL_* variables and PAGEWIRE_METRICS_PORT."""

from __future__ import annotations

import pytest

from pagewire.kit import telemetry
from pagewire.kit.metrics import metrics_port
from pagewire.kit.settings import SettingsError
from pagewire.kit.telemetry import TracingSettings


def test_no_exporter_unless_asked() -> None:
    settings = TracingSettings.from_env({}, "router")
    assert settings.exporters == () and settings.service_name == "pagewire-router"
    assert TracingSettings.from_env({"OTEL_TRACES_EXPORTER": "none"}, "router").exporters == ()


def test_otlp_over_grpc_by_default_or_http_when_asked() -> None:
    grpc = TracingSettings.from_env({"OTEL_TRACES_EXPORTER": "otlp"}, "tokens")
    assert (grpc.exporters, grpc.protocol) == (("otlp",), "grpc")
    http = TracingSettings.from_env(
        {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        "tokens",
    )
    assert (http.exporters, http.protocol) == (("otlp", "console"), "http/protobuf")
    traces_only = TracingSettings.from_env(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        },
        "tokens",
    )
    assert traces_only.protocol == "http/protobuf"


def test_sdk_disabled_wins() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert TracingSettings.from_env(env, "gateway").exporters == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_unknown_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        TracingSettings.from_env(env, "router")


def test_a_disabled_setup_instruments_nothing() -> None:
    tracing = telemetry.setup("router", {"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.enabled and not telemetry.tracing_enabled()
    assert telemetry.server_interceptors() == [] and telemetry.client_interceptors() == []
    assert telemetry.asgi_middleware() == [] and telemetry.httpx_transport(None) is None


def test_service_name_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "pagewire-router-canary")
    assert telemetry._resource("pagewire-router").attributes["service.name"] == (
        "pagewire-router-canary"
    )
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert telemetry._resource("pagewire-router").attributes["service.name"] == "pagewire-router"


def test_header_capture_always_redacts_credentials() -> None:
    env = {"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*"}
    telemetry.guard_header_capture(env)
    sanitized = env["OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"].split(",")
    assert {"authorization", "x-hub-signature-256", "cookie"} <= set(sanitized)
    untouched: dict[str, str] = {}
    telemetry.guard_header_capture(untouched)
    assert untouched == {}


def test_metrics_port() -> None:
    assert metrics_port({}) is None
    assert metrics_port({"PAGEWIRE_METRICS_PORT": "0"}) is None
    assert metrics_port({"PAGEWIRE_METRICS_PORT": "9101"}) == 9101
    with pytest.raises(SettingsError, match="PAGEWIRE_METRICS_PORT"):
        metrics_port({"PAGEWIRE_METRICS_PORT": "http"})


def test_key_hash_is_stable_and_short() -> None:
    key = "facebook:109384756201938:7294015836620194"
    assert telemetry.key_hash(key) == telemetry.key_hash(key)
    assert len(telemetry.key_hash(key)) == 16 and "7294015836620194" not in telemetry.key_hash(key)
