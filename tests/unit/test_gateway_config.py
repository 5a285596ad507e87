"""Gateway settings from the environment: defaults, secrets from files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagewire.kit.settings import SettingsError
from services.gateway.config import GatewaySettings

APP_SECRET = "test_app_secret_0123456789abcdef"
VERIFY = "verify-5f1c0e2b9a"


def env(**extra: str) -> dict[str, str]:
    base = {"PAGEWIRE_APP_SECRET": APP_SECRET, "PAGEWIRE_VERIFY_TOKEN": VERIFY}
    base.update({f"PAGEWIRE_{k}": v for k, v in extra.items()})
    return base


def test_defaults() -> None:
    settings = GatewaySettings.from_env(env())
    assert settings.app_secret.get() == APP_SECRET
    assert settings.instagram_app_secret.get() == APP_SECRET  # falls back to the app secret
    assert settings.verify_token.get() == VERIFY
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.max_body_bytes == 1_048_576
    assert settings.ingest_timeout_s == 4.0
    assert settings.header_timeout_s == 10.0
    assert settings.body_timeout_s == 5.0
    assert settings.max_concurrency == 128
    assert settings.max_items == 1000
    assert settings.router_addr == "127.0.0.1:50051"
    assert settings.log_level == "INFO"


def test_every_setting() -> None:
    settings = GatewaySettings.from_env(
        env(
            INSTAGRAM_APP_SECRET="ig_secret_abcdef0123456789",
            GATEWAY_HOST="0.0.0.0",
            GATEWAY_PORT="9090",
            GATEWAY_MAX_BODY_BYTES="2048",
            GATEWAY_INGEST_TIMEOUT_S="2.5",
            GATEWAY_HEADER_TIMEOUT_S="0.5",
            GATEWAY_BODY_TIMEOUT_S="5",
            GATEWAY_MAX_CONCURRENCY="16",
            GATEWAY_MAX_ITEMS="200",
            ROUTER_ADDR="dns:///router.pagewire.svc:50051",
            LOG_LEVEL="debug",
        )
    )
    assert settings.instagram_app_secret.get() == "ig_secret_abcdef0123456789"
    assert (settings.host, settings.port) == ("0.0.0.0", 9090)
    assert settings.max_body_bytes == 2048
    assert settings.ingest_timeout_s == 2.5
    assert (settings.header_timeout_s, settings.body_timeout_s) == (0.5, 5.0)
    assert (settings.max_concurrency, settings.max_items) == (16, 200)
    assert settings.router_addr == "dns:///router.pagewire.svc:50051"
    assert settings.log_level == "DEBUG"


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "app").write_text(APP_SECRET + "\n")
    (tmp_path / "verify").write_text(VERIFY)
    settings = GatewaySettings.from_env(
        {
            "PAGEWIRE_APP_SECRET_FILE": str(tmp_path / "app"),
            "PAGEWIRE_VERIFY_TOKEN_FILE": str(tmp_path / "verify"),
        }
    )
    assert settings.app_secret.get() == APP_SECRET
    assert settings.verify_token.get() == VERIFY


def test_secrets_never_in_repr() -> None:
    text = repr(GatewaySettings.from_env(env(INSTAGRAM_APP_SECRET="ig_secret_abcdef0123456789")))
    assert APP_SECRET not in text and VERIFY not in text and "ig_secret" not in text
    assert "**********" in text


def test_missing_app_secret_names_it() -> None:
    with pytest.raises(SettingsError, match="PAGEWIRE_APP_SECRET"):
        GatewaySettings.from_env({"PAGEWIRE_VERIFY_TOKEN": VERIFY})
    with pytest.raises(SettingsError, match="PAGEWIRE_APP_SECRET"):
        GatewaySettings.from_env({})


def test_missing_verify_token_names_it() -> None:
    with pytest.raises(SettingsError, match="PAGEWIRE_VERIFY_TOKEN"):
        GatewaySettings.from_env({"PAGEWIRE_APP_SECRET": APP_SECRET})


def test_placeholder_secret_refused() -> None:
    with pytest.raises(SettingsError, match="placeholder"):
        GatewaySettings.from_env(env(APP_SECRET="changeme"))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_PORT", "http", "PAGEWIRE_GATEWAY_PORT"),
        ("GATEWAY_PORT", "70000", "PAGEWIRE_GATEWAY_PORT"),
        ("GATEWAY_MAX_BODY_BYTES", "0", "PAGEWIRE_GATEWAY_MAX_BODY_BYTES"),
        ("GATEWAY_INGEST_TIMEOUT_S", "0", "PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S"),
        ("GATEWAY_INGEST_TIMEOUT_S", "5", "PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S"),
        ("GATEWAY_INGEST_TIMEOUT_S", "soon", "PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S"),
        ("GATEWAY_INGEST_TIMEOUT_S", "nan", "PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S"),
        ("GATEWAY_HEADER_TIMEOUT_S", "0", "PAGEWIRE_GATEWAY_HEADER_TIMEOUT_S"),
        ("GATEWAY_HEADER_TIMEOUT_S", "-1", "PAGEWIRE_GATEWAY_HEADER_TIMEOUT_S .* above 0"),
        ("GATEWAY_HEADER_TIMEOUT_S", "nan", "PAGEWIRE_GATEWAY_HEADER_TIMEOUT_S"),
        ("GATEWAY_HEADER_TIMEOUT_S", "inf", "PAGEWIRE_GATEWAY_HEADER_TIMEOUT_S"),
        ("GATEWAY_HEADER_TIMEOUT_S", "ten", "PAGEWIRE_GATEWAY_HEADER_TIMEOUT_S"),
        ("GATEWAY_BODY_TIMEOUT_S", "0", "PAGEWIRE_GATEWAY_BODY_TIMEOUT_S"),
        ("GATEWAY_BODY_TIMEOUT_S", "5.01", "PAGEWIRE_GATEWAY_BODY_TIMEOUT_S .* at most 5"),
        ("GATEWAY_BODY_TIMEOUT_S", "inf", "PAGEWIRE_GATEWAY_BODY_TIMEOUT_S"),
        ("GATEWAY_MAX_CONCURRENCY", "0", "PAGEWIRE_GATEWAY_MAX_CONCURRENCY"),
        ("GATEWAY_MAX_CONCURRENCY", "many", "PAGEWIRE_GATEWAY_MAX_CONCURRENCY"),
        ("GATEWAY_MAX_ITEMS", "0", "PAGEWIRE_GATEWAY_MAX_ITEMS"),
        ("GATEWAY_MAX_ITEMS", "1e3", "PAGEWIRE_GATEWAY_MAX_ITEMS"),
        ("LOG_LEVEL", "loud", "PAGEWIRE_LOG_LEVEL"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        GatewaySettings.from_env(env(**{name: value}))


def test_settings_are_frozen() -> None:
    settings = GatewaySettings.from_env(env())
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
