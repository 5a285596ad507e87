"""The gateway's metrics: webhook POSTs by platform and outcome, their latency, their events."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from pagewire.contract import Platform
from pagewire.kit.metrics import LATENCY_BUCKETS

PLATFORMS = tuple(platform.label for platform in Platform)
# ok: 200 after the router committed; ignored: 200 for an object that is not ours;
# rejected: 200 although the router refused the events as invalid (INVALID_ARGUMENT: a
# bug on our side no redelivery can fix; logged with the body redacted, and alerted on);
# bad_signature 401, malformed 400, wrong_object 400 (the other platform's object on this
# path), too_large 413 (bytes), too_many_items 413, body_timeout 408, unavailable 503
# (Meta retries), overloaded 503 (the in-flight limit; refused before reading the body);
# disconnected: the sender gave up mid-body.
OUTCOMES = (
    "ok",
    "ignored",
    "rejected",
    "bad_signature",
    "malformed",
    "wrong_object",
    "too_large",
    "too_many_items",
    "body_timeout",
    "unavailable",
    "overloaded",
    "disconnected",
)
RESULTS = ("stored", "duplicate", "parked")
# The kinds whose fields the event contract bounds (pagewire.contract.unstorable).
DEMOTABLE_KINDS = (
    "message",
    "postback",
    "reaction",
    "edit",
    "delivery",
    "read",
    "handover",
    "unsupported",
)

WEBHOOKS = Counter(
    "pagewire_webhooks_received",
    "Webhook POSTs received, by platform and outcome.",
    ["platform", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "pagewire_webhook_duration_seconds",
    "Time from a webhook POST's arrival to its answer (the ACK latency Meta sees).",
    ["platform"],
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_EVENTS = Counter(
    "pagewire_webhook_events",
    "Events of acknowledged webhooks, by what the router did with them.",
    ["platform", "result"],
)
EVENTS_DEMOTED = Counter(
    "pagewire_webhook_events_demoted",
    "Items sent as unsupported (<kind>:invalid, raw JSON kept) because a field broke the"
    " event contract (an over-long mid...), by the kind they would have been.",
    ["platform", "kind"],
)
for _platform in PLATFORMS:
    WEBHOOK_SECONDS.labels(_platform)
    for _outcome in OUTCOMES:
        WEBHOOKS.labels(_platform, _outcome)
    for _result in RESULTS:
        WEBHOOK_EVENTS.labels(_platform, _result)
    for _kind in DEMOTABLE_KINDS:
        EVENTS_DEMOTED.labels(_platform, _kind)
