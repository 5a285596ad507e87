"""Waiting on conditions with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from pagewire.localsuite import free_port

__all__ = ["connected", "free_port", "wait_for"]


async def wait_for(
    condition: Callable[[], Awaitable[object]] | Callable[[], object],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> object:
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except Exception as exc:  # the condition may fail until the thing is up
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from last_error
        await asyncio.sleep(interval)


async def connected(channel, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """The channel, once connected to its (just started, in-process) server.

    A call on a brand-new channel that races the server's first accept fails at once
    with UNAVAILABLE (seen once in several hundred runs); connecting first rules that out.
    """
    await asyncio.wait_for(channel.channel_ready(), timeout)
    return channel
