"""The router's metrics: events by kind and fate, ingest latency, the conversation lock, sends."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from pagewire.kit.metrics import LATENCY_BUCKETS

PLATFORMS = ("facebook", "instagram")
# conversation: one (platform, page, user); page: a page's parking lock.
LOCKS = ("conversation", "page")

EVENTS_INGESTED = Counter(
    "pagewire_events_ingested",
    "Events of committed Ingest calls, by platform and kind (stored, duplicate or parked).",
    ["platform", "kind"],
)
EVENTS_STORED = Counter("pagewire_events_stored", "Events stored for the first time.", ["platform"])
DUPLICATES = Counter(
    "pagewire_events_duplicate",
    "Events dropped because they were already stored or parked (redeliveries, retries).",
    ["platform"],
)
PARKED = Counter(
    "pagewire_events_parked", "Events parked for a page that is not connected.", ["platform"]
)
PARKED_ROUTED = Counter(
    "pagewire_parked_routed",
    "Parked events stored once their page was connected.",
    ["platform"],
)
INGEST_SECONDS = Histogram(
    "pagewire_ingest_duration_seconds",
    "Time of one Ingest call, from arrival to the last group's commit (or failure).",
    buckets=LATENCY_BUCKETS,
)
LOCK_WAIT = Histogram(
    "pagewire_lock_wait_seconds",
    "Time spent waiting for a lock, whether it was then taken or not.",
    ["lock"],
    buckets=LATENCY_BUCKETS,
)
LOCK_HOLD = Histogram(
    "pagewire_lock_hold_seconds",
    "Time a lock was held (the work done under it, commit included).",
    ["lock"],
    buckets=LATENCY_BUCKETS,
)
LOCK_WAIT_EXCEEDED = Counter(
    "pagewire_lock_wait_exceeded",
    "Lock waits that ran out (PAGEWIRE_LOCK_WAIT_MS): answered ABORTED, the gateway 503.",
    ["lock"],
)
STALE_WRITES = Counter(
    "pagewire_fence_rejections",
    "Writes of a holder whose lock had expired, refused by the fence and retried.",
)
SENDS = Counter(
    "pagewire_sends",
    "SendMessage calls by outcome: accepted, rejected, unknown, replayed, or the error's status.",
    ["outcome"],
)

for _platform in PLATFORMS:
    for _counter in (EVENTS_STORED, DUPLICATES, PARKED, PARKED_ROUTED):
        _counter.labels(_platform)
for _lock in LOCKS:
    LOCK_WAIT.labels(_lock)
    LOCK_HOLD.labels(_lock)
    LOCK_WAIT_EXCEEDED.labels(_lock)
for _outcome in ("accepted", "rejected", "unknown", "replayed"):
    SENDS.labels(_outcome)
