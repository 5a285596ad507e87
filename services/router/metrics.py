"""The router's metrics: events by kind and fate, the append and the apply stage, the
backlog, the conversation lock, sends."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from pagewire.kit.metrics import LATENCY_BUCKETS

PLATFORMS = ("facebook", "instagram")
# conversation: one (platform, page, user); page: a page's parking lock.
LOCKS = ("conversation", "page")

EVENTS_INGESTED = Counter(
    "pagewire_events_ingested",
    "Events of committed Ingest calls, by platform and kind (stored, duplicate or parked).",
    ["platform", "kind"],
)
EVENTS_STORED = Counter(
    "pagewire_events_stored", "Events appended to the log for the first time.", ["platform"]
)
DUPLICATES = Counter(
    "pagewire_events_duplicate",
    "Events dropped at the append: already in the log (redeliveries, retries) or purged.",
    ["platform"],
)
DEMOTED = Counter(
    "pagewire_events_demoted",
    "Events kept raw as unsupported because they could not be stored as their kind.",
    ["kind"],
)
PARKED = Counter(
    "pagewire_events_parked", "Events parked for a page that is not connected.", ["platform"]
)
PARKED_ROUTED = Counter(
    "pagewire_parked_routed",
    "Parked events given back to the apply stage once their page was connected.",
    ["platform"],
)
INGEST_SECONDS = Histogram(
    "pagewire_ingest_duration_seconds",
    "Time of one Ingest call, from arrival to the commit of its events in the log.",
    buckets=LATENCY_BUCKETS,
)
COMMIT_EVENTS = Histogram(
    "pagewire_log_commit_events",
    "Events per group commit of the log (every Ingest waiting shares one).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
APPLY_LAG = Histogram(
    "pagewire_apply_lag_seconds",
    "From an event's commit in the log to its commit in its conversation (visible).",
    buckets=LATENCY_BUCKETS,
)
APPLIED = Counter("pagewire_events_applied", "Log entries applied to their conversations.")
APPLY_BATCHES = Counter(
    "pagewire_apply_batches",
    "Apply batches by outcome: applied something, or only gave entries back.",
    ["outcome"],
)
APPLY_BUSY = Counter(
    "pagewire_apply_busy_conversations",
    "Conversations an apply batch left for later because another holder had the lock.",
)
APPLY_FAILED = Counter(
    "pagewire_apply_failed_entries",
    "Log entries the database refused to apply (kept as failed, raw item and all).",
)
LOG_PENDING = Gauge("pagewire_log_pending", "Log entries appended and not applied yet.")
LOG_PARKED = Gauge("pagewire_log_parked", "Log entries parked for pages not connected.")
LOG_OLDEST_PENDING = Gauge(
    "pagewire_log_oldest_pending_seconds", "Age of the oldest pending log entry (0: none)."
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
    "Lock waits that ran out (PAGEWIRE_LOCK_WAIT_MS): a send answered ABORTED.",
    ["lock"],
)
STALE_WRITES = Counter(
    "pagewire_fence_rejections",
    "Batches of a holder whose lock had expired, refused by the fence and given back.",
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
for _outcome in ("applied", "idle"):
    APPLY_BATCHES.labels(_outcome)
