"""Contact profiles: fetched from Graph after commit, never inside the lock or the ingest path.

A conversation group that committed schedules its contact; a bounded pool of
background tasks asks Graph for the person's name and picture with the page's
token, at most once per contact per refresh period. Failures never block or
lose a message: "no profile" (2018218) and the like are recorded and not
retried until the next period; a dead token (190 …) marks the page for
re-authorization through the vault; an unreachable Graph or vault is retried
on the contact's next event. A lookup continues the trace of the webhook that
scheduled it, so its DecryptToken and Graph spans are found under that webhook.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.graph.codes import is_token_invalid
from pagewire.graph.errors import GraphError
from pagewire.kit import telemetry
from pagewire.kit.db import unavailable_reason
from pagewire.kit.errors import PagewireError
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from services.router.store import profiles as store_profiles

log = logging.getLogger("pagewire.router.profiles")
tracer = telemetry.tracer("pagewire.router.profiles")

FIELDS = {
    "FACEBOOK": "first_name,last_name,name,profile_pic",
    "INSTAGRAM": "name,username,profile_pic",
}
# At most this many contacts waiting; a burst beyond it is dropped (fetched on a later event).
MAX_PENDING = 10_000


class TokenSource(Protocol):
    async def decrypt(self, platform: str, page_id: str) -> tuple[Secret, str]: ...

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None: ...


class GraphGet(Protocol):
    async def request(self, method: str, platform: str, path: str, **kwargs: Any) -> Any: ...


Key = tuple[str, str, str]  # platform name, page id, user id


class ProfileFetcher:
    """Background profile lookups with bounded concurrency and a per-contact period."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        graph: GraphGet,
        tokens: TokenSource,
        *,
        refresh_s: float,
        concurrency: int = 4,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._graph = graph
        self._tokens = tokens
        self._refresh_ms = int(refresh_s * 1000)
        self._clock = clock
        # Each contact with the trace context of the event that asked for it.
        self._queue: asyncio.Queue[tuple[Key, Any]] = asyncio.Queue(MAX_PENDING)
        self._queued: set[Key] = set()
        # Contacts known fresh in this process, so a busy conversation costs no query.
        self._fresh_until: dict[Key, int] = {}
        self._workers = [asyncio.create_task(self._work()) for _ in range(concurrency)]
        self.fetched = 0

    def schedule(self, platform: str, page_id: str, user_id: str) -> None:
        """Asks for the contact's profile eventually; returns at once."""
        key = (platform, page_id, user_id)
        if not user_id.isdigit() or not page_id.isdigit() or key in self._queued:
            return  # placeholder ids from test bodies have no profile to fetch
        if self._fresh_until.get(key, 0) > self._clock():
            return
        try:
            self._queue.put_nowait((key, telemetry.capture()))
        except asyncio.QueueFull:
            return
        self._queued.add(key)

    async def idle(self) -> None:
        """Waits until every scheduled lookup is done (tests, shutdown)."""
        await self._queue.join()

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            key, context = await self._queue.get()
            platform, page_id, user_id = key
            attributes = {
                "pagewire.platform": platform.lower(),
                "pagewire.page_id": page_id,
                "pagewire.conversation.key_hash": telemetry.key_hash(
                    f"{platform.lower()}:{page_id}:{user_id}"
                ),
            }
            try:
                with (
                    telemetry.continued(context),
                    tracer.start_as_current_span("profile lookup", attributes=attributes),
                ):
                    try:
                        await self._fetch(*key)
                    except Exception as exc:
                        reason = unavailable_reason(exc)
                        if reason is None:
                            log.exception("profile lookup failed", extra={"page_id": page_id})
                        else:
                            # An outage, not a bug: one line, retried on the contact's next event.
                            log.warning(
                                "profile lookup failed: database unavailable",
                                extra={"page_id": page_id, "reason": reason},
                            )
            finally:
                self._queued.discard(key)
                self._queue.task_done()

    async def _fetch(self, platform: str, page_id: str, user_id: str) -> None:
        now = self._clock()
        async with self._sessions() as session:
            checked = await store_profiles.checked_at(session, platform, page_id, user_id)
        if checked is None:
            return
        if checked + self._refresh_ms > now:
            self._fresh_until[(platform, page_id, user_id)] = checked + self._refresh_ms
            return
        values: dict[str, Any] = {"profile_checked_at_ms": now, "profile_error": ""}
        try:
            token, _ = await self._tokens.decrypt(platform, page_id)
            body = await self._graph.request(
                "GET",
                platform,
                user_id,
                token=token,
                params={"fields": FIELDS[platform]},
                object_id=page_id,
            )
        except GraphError as exc:
            if exc.unavailable or exc.throttled:
                return  # try again on the contact's next event
            values["profile_error"] = f"graph error {exc.code}/{exc.subcode}"
            if is_token_invalid(exc.code, exc.subcode):
                await self._mark_invalid(platform, page_id, exc)
        except PagewireError as exc:
            log.warning(
                "no token for a profile lookup",
                extra={"page_id": page_id, "error": type(exc).__name__},
            )
            return
        else:
            if isinstance(body, dict):
                for field in ("name", "first_name", "last_name", "username", "profile_pic"):
                    value = body.get(field)
                    if isinstance(value, str):
                        values[field] = value
            self.fetched += 1
        async with self._sessions() as session, session.begin():
            await store_profiles.store(session, platform, page_id, user_id, values)
        self._fresh_until[(platform, page_id, user_id)] = now + self._refresh_ms

    async def _mark_invalid(self, platform: str, page_id: str, exc: GraphError) -> None:
        try:
            await self._tokens.mark_invalid(
                platform, page_id, "profile lookup: token refused by Graph", exc.code, exc.subcode
            )
        except PagewireError as error:
            log.warning(
                "could not mark the token invalid",
                extra={"page_id": page_id, "error": type(error).__name__},
            )
