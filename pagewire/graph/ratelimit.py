"""Graph's usage headers and the waits they ask for, with an injectable clock.

`X-Business-Use-Case-Usage` is `{"<object id>": [{"type", "call_count", ...,
"estimated_time_to_regain_access": <minutes>}]}` (META_PLATFORM.md §9). When
Graph says to wait, `Throttle` remembers it per object id so that no request
for that object leaves before the time is up — in this call or any later one.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

BUC_HEADER = "x-business-use-case-usage"
APP_USAGE_HEADER = "x-app-usage"
APP_WIDE = "*"
# `X-App-Usage` gives percentages of the app's hourly allowance and no time to wait: near
# the top every call of the process slows down, at the top it waits a minute.
APP_USAGE_SLOW_PERCENT = 90.0
APP_USAGE_SLOW_S = 5.0
APP_USAGE_FULL_S = 60.0


class Clock:
    """Monotonic seconds and a sleep; tests pass one that advances without waiting."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def regain_access_s(response: httpx.Response) -> dict[str, float]:
    """Seconds to wait per business object id, from `X-Business-Use-Case-Usage` (0s omitted)."""
    raw = response.headers.get(BUC_HEADER)
    if not raw:
        return {}
    try:
        usage = json.loads(raw)
    except ValueError:
        return {}
    waits: dict[str, float] = {}
    if not isinstance(usage, dict):
        return waits
    for object_id, entries in usage.items():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            try:
                minutes = float(entry.get("estimated_time_to_regain_access") or 0)
            except (TypeError, ValueError):
                continue
            if minutes > 0:
                waits[str(object_id)] = max(waits.get(str(object_id), 0.0), minutes * 60)
    return waits


def app_usage_hold_s(response: httpx.Response) -> float:
    """Seconds every call of the app should wait, from `X-App-Usage` (0: go on)."""
    raw = response.headers.get(APP_USAGE_HEADER)
    if not raw:
        return 0.0
    try:
        usage = json.loads(raw)
    except ValueError:
        return 0.0
    if not isinstance(usage, dict):
        return 0.0
    percents = []
    for key in ("call_count", "total_time", "total_cputime"):
        value = usage.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            percents.append(float(value))
    highest = max(percents, default=0.0)
    if highest >= 100:
        return APP_USAGE_FULL_S
    return APP_USAGE_SLOW_S if highest >= APP_USAGE_SLOW_PERCENT else 0.0


@dataclass
class Backoff:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base·2ⁿ))."""

    base_s: float = 0.5
    cap_s: float = 20.0
    rng: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        # At least a tenth of the step, so a retry never fires back-to-back.
        step = min(self.cap_s, self.base_s * (2**attempt))
        return step * (0.1 + 0.9 * self.rng())


class Throttle:
    """Per-object "not before" times Graph asked for; shared by every call of a process."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def hold(self, object_id: str, seconds: float) -> None:
        """No call for `object_id` for `seconds` from now (extends, never shortens)."""
        until = self._clock.monotonic() + seconds
        self._until[object_id] = max(self._until.get(object_id, 0.0), until)

    def remaining(self, *object_ids: str) -> float:
        """Seconds still to wait before calling about any of these objects (0: go)."""
        now = self._clock.monotonic()
        waits = [self._until.get(o, 0.0) - now for o in (*object_ids, APP_WIDE)]
        for object_id in [o for o, t in self._until.items() if t <= now]:
            del self._until[object_id]
        return max(0.0, *waits)
