"""Graph API call metrics, shared by every service that calls Graph (router, subscriptions)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from pagewire.kit.metrics import LATENCY_BUCKETS

GRAPH_CALLS = Counter(
    "pagewire_graph_calls",
    "Graph API requests (each attempt) by method, endpoint and result: ok, Graph's error"
    " code, http_<status> without one, timeout, unreachable, or held (not sent: rate limit).",
    ["method", "endpoint", "code"],
)
GRAPH_SECONDS = Histogram(
    "pagewire_graph_call_duration_seconds",
    "Time of one Graph API request (one attempt).",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)


def endpoint_of(path: str) -> str:
    """A path with its ids replaced: `1093…/subscribed_apps` → `{id}/subscribed_apps`."""
    # Comment ids are "<post>_<comment>": ids too, never a label value.
    return "/".join(
        "{id}" if part and part.replace("_", "").isdigit() else part for part in path.split("/")
    )
