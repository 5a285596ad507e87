"""Subscriptions service settings, read once from the environment at start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pagewire.graph import GraphSettings
from pagewire.kit.settings import (
    PREFIX,
    SettingsError,
    database_url,
    env_float,
    env_int,
    env_str,
    grpc_target,
    hidden,
)
from services.subscriptions.history import MAX_DAYS, HistorySettings
from services.subscriptions.reconcile import ReconcileSettings

# Messenger's names are plural (messaging_referrals), Instagram's singular (messaging_referral).
FACEBOOK_FIELDS = (
    "messages",
    "message_echoes",
    "message_deliveries",
    "message_reads",
    "message_reactions",
    "message_edits",
    "messaging_postbacks",
    "messaging_referrals",
    "messaging_optins",
    "messaging_handovers",
    "standby",
    "messaging_policy_enforcement",
    # Page posts' comments and reactions (changes[] items, stored as comment threads).
    "feed",
)
INSTAGRAM_FIELDS = (
    "messages",
    "message_reactions",
    "messaging_seen",
    "messaging_postbacks",
    "messaging_referral",
    "messaging_optins",
    # Comments on media, on live broadcasts, and @mentions (changes[] items).
    "comments",
    "live_comments",
    "mentions",
)

FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _fields(environ: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = environ.get(PREFIX + name, "")
    if not raw.strip():
        return default
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in names:
        if not FIELD_NAME.fullmatch(item):
            raise SettingsError(
                f"{PREFIX}{name}: {item[:64]!r} is not a webhook field name (a-z, 0-9, _)"
            )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class SubscriptionsSettings:
    """Where the service listens and stores, and how it reaches Graph, tokens and router."""

    database_url: str = hidden()  # may carry a password
    graph: GraphSettings = field(default_factory=GraphSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    tokens_target: str = "127.0.0.1:50052"
    router_target: str = "127.0.0.1:50051"
    rpc_timeout_s: float = 2.0
    route_parked_timeout_s: float = 15.0
    # Appending one result page of imported messages to the router's log.
    ingest_timeout_s: float = 10.0
    # How often notices the router has not taken yet are looked for (each has its own
    # delay, doubling from 1 s to 5 min).
    notice_retry_s: float = 2.0
    facebook_fields: tuple[str, ...] = FACEBOOK_FIELDS
    instagram_fields: tuple[str, ...] = INSTAGRAM_FIELDS
    host: str = "127.0.0.1"
    port: int = 50053
    drain_s: float = 0.5
    grace_s: float = 5.0
    log_level: str = "INFO"

    @property
    def default_fields(self) -> dict[str, tuple[str, ...]]:
        """Fields subscribed when ConnectPage names none, by platform name."""
        return {"FACEBOOK": self.facebook_fields, "INSTAGRAM": self.instagram_fields}

    @property
    def app_ids(self) -> dict[str, str]:
        """Our app's id per platform, as GET subscribed_apps lists it ("" when not set)."""
        return {"FACEBOOK": self.graph.app_id, "INSTAGRAM": self.graph.instagram_app_id}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SubscriptionsSettings:
        return cls(
            database_url=database_url(environ, "subscriptions"),
            graph=GraphSettings.from_env(environ),
            reconcile=reconcile_settings(environ),
            history=history_settings(environ),
            tokens_target=grpc_target(environ, "tokens", 50052),
            router_target=grpc_target(environ, "router", 50051),
            rpc_timeout_s=env_float(environ, "RPC_TIMEOUT_S", 2.0, minimum=0.05),
            route_parked_timeout_s=env_float(environ, "ROUTE_PARKED_TIMEOUT_S", 15.0, minimum=0.1),
            ingest_timeout_s=env_float(environ, "HISTORY_INGEST_TIMEOUT_S", 10.0, minimum=0.1),
            notice_retry_s=env_float(environ, "ROUTER_NOTICE_RETRY_S", 2.0, minimum=0.05),
            facebook_fields=_fields(environ, "FACEBOOK_FIELDS", FACEBOOK_FIELDS),
            instagram_fields=_fields(environ, "INSTAGRAM_FIELDS", INSTAGRAM_FIELDS),
            host=env_str(environ, "GRPC_HOST", "127.0.0.1"),
            port=env_int(environ, "SUBSCRIPTIONS_PORT", 50053, minimum=0, maximum=65535),
            drain_s=env_float(environ, "SHUTDOWN_DRAIN_S", 0.5),
            grace_s=env_float(environ, "SHUTDOWN_GRACE_S", 5.0),
            log_level=env_str(environ, "LOG_LEVEL", "INFO").upper(),
        )


def reconcile_settings(environ: Mapping[str, str]) -> ReconcileSettings:
    """The reconcile loop's period, jitter and concurrency, and the Instagram token windows."""
    refresh = env_float(environ, "IG_TOKEN_REFRESH_DAYS", 20.0, minimum=1)
    reauth = env_float(environ, "IG_TOKEN_REAUTH_DAYS", 7.0)
    if reauth >= refresh:
        raise SettingsError(
            f"{PREFIX}IG_TOKEN_REAUTH_DAYS must be less than {PREFIX}IG_TOKEN_REFRESH_DAYS"
        )
    jitter = env_float(environ, "RECONCILE_JITTER", 0.2)
    if jitter >= 1:
        raise SettingsError(f"{PREFIX}RECONCILE_JITTER must be below 1 (a fraction of the period)")
    return ReconcileSettings(
        interval_s=env_float(environ, "RECONCILE_INTERVAL_S", 600.0),
        jitter=jitter,
        concurrency=env_int(environ, "RECONCILE_CONCURRENCY", 4, minimum=1, maximum=64),
        ig_refresh_before_days=refresh,
        ig_reauth_before_days=reauth,
    )


def history_settings(environ: Mapping[str, str]) -> HistorySettings:
    """History import's window, pace and lease; gap repair's period and reach."""
    return HistorySettings(
        days=env_int(environ, "HISTORY_DAYS", 90, minimum=1, maximum=MAX_DAYS),
        calls_per_second=env_float(environ, "HISTORY_CALLS_PER_SECOND", 2.0, minimum=0.01),
        conversations_per_call=env_int(
            environ, "HISTORY_CONVERSATIONS_PER_CALL", 25, minimum=1, maximum=100
        ),
        messages_per_call=env_int(
            environ, "HISTORY_MESSAGES_PER_CALL", 100, minimum=1, maximum=100
        ),
        concurrency=env_int(environ, "HISTORY_CONCURRENCY", 2, minimum=1, maximum=64),
        lease_s=env_float(environ, "HISTORY_LEASE_S", 30.0, minimum=0.5),
        poll_s=env_float(environ, "HISTORY_POLL_S", 5.0, minimum=0.05),
        max_wait_s=env_float(environ, "HISTORY_MAX_WAIT_S", 900.0, minimum=0.1),
        gap_interval_s=env_float(environ, "GAP_REPAIR_INTERVAL_S", 3600.0),
        gap_days=env_float(environ, "GAP_REPAIR_DAYS", 3.0, minimum=0.01),
        gap_messages=env_int(environ, "GAP_REPAIR_MESSAGES", 25, minimum=1, maximum=100),
        gap_grace_s=env_float(environ, "GAP_REPAIR_GRACE_S", 300.0),
        gap_conversations=env_int(environ, "GAP_REPAIR_CONVERSATIONS", 200, minimum=1),
    )
