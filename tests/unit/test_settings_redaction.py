"""No password of a database or Redis URL in a settings repr or a URL meant for a log line."""

from __future__ import annotations

import pytest

from pagewire.kit.settings import SettingsError, redacted_url
from services.router.config import RouterSettings
from services.subscriptions.config import SubscriptionsSettings

PASSWORD = "hunter2-Zq81x"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql+psycopg://app:{PASSWORD}@db.internal:5432/pagewire?sslmode=require",
            "postgresql+psycopg://app:***@db.internal:5432/pagewire?sslmode=require",
        ),
        (f"redis://:{PASSWORD}@redis:6379/0", "redis://:***@redis:6379/0"),
        (f"rediss://default:{PASSWORD}@redis:6380", "rediss://default:***@redis:6380"),
        # An `@` in the password itself: everything up to the host's `@` is userinfo.
        (f"postgresql://app:{PASSWORD}@x@db/pw", "postgresql://app:***@db/pw"),
        (
            f"postgresql://db/pw?password={PASSWORD}&sslmode=x",
            "postgresql://db/pw?password=***&sslmode=x",
        ),
        ("postgresql://app@db/pw", "postgresql://app@db/pw"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("sqlite+aiosqlite:////srv/var/router.db", "sqlite+aiosqlite:////srv/var/router.db"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
    assert PASSWORD not in redacted_url(url)


def test_an_unparsable_url_is_reduced_to_its_scheme() -> None:
    assert redacted_url(f"postgresql://app:{PASSWORD}@[::1/pw") == "postgresql://…"


def router_env(**extra: str) -> dict[str, str]:
    return {
        "PAGEWIRE_DATABASE_URL": f"postgresql://app:{PASSWORD}@db:5432/pagewire",
        "PAGEWIRE_REDIS_URL": f"redis://:{PASSWORD}@redis:6379/0",
        **{f"PAGEWIRE_{k}": v for k, v in extra.items()},
    }


def test_router_settings_repr_shows_no_password() -> None:
    settings = RouterSettings.from_env(router_env())
    assert PASSWORD in settings.database_url and PASSWORD in (settings.redis_url or "")
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert "redis_prefix='pagewire'" in repr(settings)


def test_subscriptions_settings_repr_shows_no_password() -> None:
    settings = SubscriptionsSettings.from_env(router_env())
    assert PASSWORD not in repr(settings)


def test_router_timeouts_and_readiness_interval() -> None:
    settings = RouterSettings.from_env(router_env())
    assert (settings.redis_timeout_s, settings.readiness_interval_s) == (1.0, 1.0)
    tuned = RouterSettings.from_env(router_env(REDIS_TIMEOUT_S="0.5", READINESS_INTERVAL_S="2"))
    assert (tuned.redis_timeout_s, tuned.readiness_interval_s) == (0.5, 2.0)
    with pytest.raises(SettingsError, match="PAGEWIRE_REDIS_TIMEOUT_S"):
        RouterSettings.from_env(router_env(REDIS_TIMEOUT_S="0"))
