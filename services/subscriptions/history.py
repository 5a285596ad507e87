"""History import: a connected page's past conversations, read from the Conversations API
into the router's event log, resumable at every result page.

An import lists the page's conversations (newest first, down to its window), recording
each result page and its cursor; then reads each conversation's messages, newest first,
one result page a call, appends them to the router's log (`router.Ingest`, the same log
and the same deduplication by mid as webhooks), and only then records the page's cursor
and counters. A process killed anywhere resumes from the last recorded result page; what
it appends again the log drops. After a conversation's last message it appends a marker
(pagewire.history.marker_event), whose apply tells consumers once that the
conversation's history is readable; imported messages send no MESSAGE_CREATED.

Graph is paced per page (a ceiling of calls per second shared with gap repair; Meta
allows the Conversations API 2 calls/s/Page), the client honours Graph's usage headers
and backs off on 4/17/32/613, and a wait Graph asks for is slept out with the lease kept
alive: a rate limit never fails an import. Graph refusing for good (a dead token, a
missing permission) fails it, with Graph's error, until asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiolimiter import AsyncLimiter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.contract import Platform
from pagewire.graph import ConversationsApi, GraphError, ResultPage
from pagewire.graph.ratelimit import Backoff
from pagewire.history import HISTORY, marker_event, message_event, person_of
from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import NotFound, PagewireError, Unavailable
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from pagewire.normalize import graph_time_ms
from pagewire.proto import events_pb2
from services.subscriptions import metrics, store
from services.subscriptions.ports import Router, Vault
from services.subscriptions.store import HistoryImport, Listed

log = logging.getLogger("pagewire.subscriptions.history")

DAY_MS = 86_400_000
# Graph's "invalid parameter", which is also how it answers for an object that is gone.
INVALID_PARAMETER = 100
MAX_DAYS = 3650
T = TypeVar("T")


@dataclass(frozen=True)
class HistorySettings:
    """How far back, how fast and how many at once; and gap repair's period and reach."""

    days: int = 90
    # Per page, shared by the import and gap repair (Meta: 2 calls/s/Page).
    calls_per_second: float = 2.0
    conversations_per_call: int = 25
    messages_per_call: int = 100
    # Pages imported at once by one replica.
    concurrency: int = 2
    # A replica's hold on an import, renewed at every result page and during waits.
    lease_s: float = 30.0
    # How often imports left by a dead replica are looked for (a request wakes it at once).
    poll_s: float = 5.0
    # The longest one wait is slept before Graph is asked again.
    max_wait_s: float = 900.0
    # Gap repair: the period (0: off), conversations active in the last `gap_days`, their
    # newest `gap_messages` messages, none newer than `gap_grace_s` (their webhook may be
    # on its way), at most `gap_conversations` a page a pass.
    gap_interval_s: float = 3600.0
    gap_days: float = 3.0
    gap_messages: int = 25
    gap_grace_s: float = 300.0
    gap_conversations: int = 200


class Pacer:
    """A ceiling of Graph calls per second per page, for every caller in this process."""

    def __init__(self, calls_per_second: float) -> None:
        self._rate = calls_per_second
        self._limiters: dict[tuple[str, str], AsyncLimiter] = {}

    async def call(self, platform: str, page_id: str, call: Callable[[], Awaitable[T]]) -> T:
        limiter = self._limiters.get((platform, page_id))
        if limiter is None:
            # max_rate 1 over 1/rate s: evenly spaced calls, no burst at the start.
            limiter = AsyncLimiter(1, 1 / self._rate)
            self._limiters[(platform, page_id)] = limiter
        async with limiter:
            return await call()


@dataclass(frozen=True)
class HistoryView:
    """An import as GetPage shows it."""

    state: str
    days: int
    since_ms: int
    conversations_total: int
    conversations_done: int
    messages_read: int
    messages_stored: int
    graph_calls: int
    error: str
    error_code: int
    requested_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    updated_at_ms: int

    @classmethod
    def of(cls, row: HistoryImport) -> HistoryView:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


class _Stop(Exception):
    """The import ends here: failed (with the Graph error) or taken over by another replica."""

    def __init__(self, error: str = "", code: int = 0, *, lost: bool = False) -> None:
        super().__init__(error)
        self.error, self.code, self.lost = error, code, lost


class HistoryImporter:
    """Runs the imports that are due, a few pages at once, each under a lease."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        vault: Vault,
        api: ConversationsApi,
        router: Router,
        pacer: Pacer,
        settings: HistorySettings,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._api = api
        self._router = router
        self._pacer = pacer
        self.settings = settings
        self._clock = clock
        self._owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lease_ms = int(settings.lease_s * 1000)
        self._backoff = Backoff(1.0, 60.0)
        self._wake = asyncio.Event()
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}

    # -- asking -------------------------------------------------------------------------

    async def request(
        self, platform: str, page_id: str, *, days: int = 0, restart: bool = False
    ) -> HistoryView:
        """Starts (or resumes) the page's import; it runs in the background."""
        days = days or self.settings.days
        now = self._clock()
        async with self._sessions() as session, session.begin():
            row = await store.request_history(
                session,
                platform,
                page_id,
                days=days,
                since_ms=now - days * DAY_MS,
                now=now,
                restart=restart,
            )
            view = HistoryView.of(row)
        self._wake.set()
        return view

    async def views(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], HistoryView]:
        """The imports of these pages (pages never imported are left out)."""
        try:
            async with self._sessions() as session:
                rows = await store.histories(session, keys)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        return {key: HistoryView.of(row) for key, row in rows.items()}

    def wake(self) -> None:
        """Look for due imports now (a connect just asked for one)."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def loop(self, stop: asyncio.Event) -> None:
        """Until `stop`: start the imports that are due; on stop, give their leases up."""
        try:
            while not stop.is_set():
                try:
                    await self.start_due()
                except Exception as exc:  # a database outage: next period
                    log.warning("history imports not started", extra={"error": type(exc).__name__})
                self._wake.clear()
                waiters = {
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(self._wake.wait()),
                }
                _, pending = await asyncio.wait(
                    waiters, timeout=self.settings.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
        finally:
            await self.stop_all()

    async def start_due(self) -> int:
        """Claims and starts imports while this replica has room; how many it started."""
        room = self.settings.concurrency - len(self._running)
        if room <= 0:
            return 0
        now = self._clock()
        async with self._sessions() as session:
            due = await store.due_histories(session, now, room * 4)
        started = 0
        for platform, page_id, seen in due:
            if started >= room or (platform, page_id) in self._running:
                continue
            async with self._sessions() as session, session.begin():
                claimed = await store.claim_history(
                    session,
                    platform,
                    page_id,
                    seen_lease_until_ms=seen,
                    owner=self._owner,
                    now=now,
                    lease_ms=self._lease_ms,
                )
            if claimed:
                task = asyncio.create_task(self._run(platform, page_id), name="history import")
                self._running[(platform, page_id)] = task
                started += 1
        return started

    async def stop_all(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, platform: str, page_id: str) -> None:
        key = {"platform": platform, "page_id": page_id}
        try:
            await self._import(platform, page_id)
        except _Stop as stop:
            if stop.lost:
                log.warning(
                    "history import stopped: the page was disconnected, or another replica"
                    " took the import over",
                    extra=key,
                )
            else:
                await self._end(platform, page_id, store.FAILED, stop.error, stop.code)
                metrics.HISTORY_IMPORTS.labels(platform.lower(), "failed").inc()
                log.warning(
                    "history import failed", extra={**key, "error": stop.error, "code": stop.code}
                )
        except asyncio.CancelledError:
            # Stopping: hand the import over now rather than after the lease.
            with contextlib.suppress(Exception):
                async with self._sessions() as session, session.begin():
                    await store.release_history(
                        session, platform, page_id, self._owner, self._clock()
                    )
            raise
        except Exception as exc:  # the database went away: the lease runs out, then a retry
            log.warning(
                "history import interrupted; it resumes after its lease",
                extra={**key, "error": type(exc).__name__},
            )
        finally:
            self._running.pop((platform, page_id), None)
            self._wake.set()

    # -- one import -----------------------------------------------------------------------

    async def _import(self, platform_name: str, page_id: str) -> None:
        platform = Platform(platform_name)
        async with self._sessions() as session:
            row = await store.get_history(session, platform_name, page_id)
        if row is None:
            return
        since_ms, cursor, listed = row.since_ms, row.list_cursor, row.listed
        log.info(
            "history import running",
            extra={
                "platform": platform_name,
                "page_id": page_id,
                "days": row.days,
                "resumed": bool(row.graph_calls),
            },
        )
        token = await self._token(platform, page_id)
        while not listed:
            conversations, after = await self._graph(
                platform,
                page_id,
                "conversations",
                lambda after=cursor: self._api.conversations(
                    platform.value,
                    page_id,
                    token,
                    after=after,
                    limit=self.settings.conversations_per_call,
                ),
            )
            found, reached_end = [], not after
            for conversation in conversations:
                updated = graph_time_ms(conversation.updated_time) or 0
                if updated and updated < since_ms:
                    reached_end = True  # newest first: every later one is older still
                    break
                user_id, name = person_of(conversation.participants, page_id)
                found.append(Listed(conversation.id, user_id, name, updated))
            await self._write(
                lambda session, found=found, after=after, end=reached_end: store.record_listing(
                    session,
                    platform.value,
                    page_id,
                    self._owner,
                    found=found,
                    cursor=after,
                    listed=end,
                    now=self._clock(),
                    lease_ms=self._lease_ms,
                )
            )
            cursor, listed = after, reached_end
        while True:
            async with self._sessions() as session:
                conversation = await store.next_conversation(session, platform.value, page_id)
            if conversation is None:
                break
            await self._conversation(platform, page_id, conversation, since_ms, token)
        await self._end(platform.value, page_id, store.DONE)
        metrics.HISTORY_IMPORTS.labels(platform.label, "done").inc()
        log.info("history import done", extra={"platform": platform.value, "page_id": page_id})

    async def _conversation(
        self,
        platform: Platform,
        page_id: str,
        conversation: store.HistoryConversation,
        since_ms: int,
        token: Secret,
    ) -> None:
        conversation_id = conversation.conversation_id
        cursor, newest = conversation.cursor, conversation.newest_mid
        user_id, read_before = conversation.user_id, conversation.messages_read
        while True:
            try:
                page = await self._graph(
                    platform,
                    page_id,
                    "messages",
                    lambda after=cursor: self._api.messages(
                        platform.value,
                        page_id,
                        conversation_id,
                        token,
                        after=after,
                        limit=self.settings.messages_per_call,
                    ),
                )
            except _Stop as stop:
                if stop.code != INVALID_PARAMETER:
                    raise
                # The conversation went away after it was listed (deleted in Meta's
                # inbox): nothing more to read there; the import goes on.
                log.info(
                    "history import skipped a conversation Graph no longer has",
                    extra={"platform": platform.value, "page_id": page_id, "error": stop.error},
                )
                page = ResultPage(items=[], after="")
            now = self._clock()
            events: list[events_pb2.Event] = []
            reached_since = False
            for item in page.items:
                event = message_event(
                    platform, page_id, item, origin=HISTORY, received_at_ms=now, user_id=user_id
                )
                if event is None:
                    continue
                if event.timestamp_ms < since_ms:
                    reached_since = True
                    break
                events.append(event)
            if events and not newest:
                newest = events[0].id
            user_id = user_id or next((e.user_id for e in events if e.user_id), "")
            done = reached_since or not page.after
            stored = await self._ingest(events) if events else 0
            if done and user_id:
                read = read_before + len(events)
                updated = conversation.updated_time_ms or max(
                    (e.timestamp_ms for e in events), default=now
                )
                await self._ingest(
                    [
                        marker_event(
                            platform,
                            page_id,
                            conversation_id,
                            user_id,
                            conversation.user_name,
                            messages=read,
                            newest=(newest,),
                            updated_time_ms=updated,
                            received_at_ms=now,
                        )
                    ]
                )
            async with self._sessions() as session, session.begin():
                recorded = await store.record_messages(
                    session,
                    platform.value,
                    page_id,
                    self._owner,
                    conversation_id,
                    cursor=page.after,
                    done=done,
                    read=len(events),
                    stored=stored,
                    newest_mid=newest,
                    now=self._clock(),
                    lease_ms=self._lease_ms,
                )
            if not recorded:
                raise _Stop(lost=True)
            metrics.HISTORY_MESSAGES.labels(platform.label, "stored").inc(stored)
            metrics.HISTORY_MESSAGES.labels(platform.label, "duplicate").inc(len(events) - stored)
            read_before += len(events)
            if done:
                return
            cursor = page.after

    # -- the calls, each waited out until it goes through -----------------------------------

    async def _token(self, platform: Platform, page_id: str) -> Secret:
        attempt = 0
        while True:
            try:
                token, _status = await self._vault.decrypt(platform.value, page_id)
                return token
            except NotFound:
                raise _Stop("the vault holds no token for the page") from None
            except Unavailable as exc:
                await self._wait(platform, page_id, self._backoff.delay(attempt), str(exc), 0)
                attempt += 1

    async def _graph(
        self, platform: Platform, page_id: str, edge: str, call: Callable[[], Awaitable[T]]
    ) -> T:
        attempt = 0
        while True:
            try:
                result = await self._pacer.call(platform.value, page_id, call)
            except GraphError as exc:
                code = str(exc.code) if exc.code else ("unreachable" if exc.unavailable else "http")
                metrics.HISTORY_CALLS.labels(platform.label, edge, code).inc()
                metrics.HISTORY_ERRORS.labels(platform.label, code).inc()
                if exc.token_invalid or not (exc.transient or exc.throttled):
                    if exc.token_invalid:
                        with contextlib.suppress(PagewireError):
                            await self._vault.mark_invalid(
                                platform.value, page_id, exc.summary, exc.code, exc.subcode
                            )
                    raise _Stop(exc.summary, exc.code) from None
                delay = max(exc.retry_after_s, self._backoff.delay(attempt))
                await self._wait(platform, page_id, delay, exc.summary, exc.code)
                attempt += 1
                continue
            metrics.HISTORY_CALLS.labels(platform.label, edge, "ok").inc()
            return result

    async def _ingest(self, events: list[events_pb2.Event]) -> int:
        """Appends to the router's log until it commits; how many were new to it."""
        attempt = 0
        event = events[0]
        platform = Platform.from_proto(event.platform)
        while True:
            try:
                stored, _duplicates = await self._router.ingest(events)
                return stored
            except Unavailable as exc:
                await self._wait(platform, event.page_id, self._backoff.delay(attempt), str(exc), 0)
                attempt += 1
            except PagewireError as exc:
                raise _Stop(f"the router refused the import's events: {exc}") from None

    async def _wait(
        self, platform: Platform, page_id: str, seconds: float, error: str, code: int
    ) -> None:
        """Sleeps out a wait, the lease kept alive; the reason shows in GetPage meanwhile."""
        seconds = min(seconds, self.settings.max_wait_s)
        log.info(
            "history import waiting",
            extra={
                "platform": platform.value,
                "page_id": page_id,
                "wait_s": round(seconds, 1),
                "error": error,
            },
        )
        text = f"waiting {seconds:.0f} s: {error}"
        left = seconds
        while True:
            await self._write(
                lambda session: store.note_history_wait(
                    session,
                    platform.value,
                    page_id,
                    self._owner,
                    error=text,
                    code=code,
                    now=self._clock(),
                    lease_ms=self._lease_ms,
                )
            )
            if left <= 0:
                return
            step = min(left, self.settings.lease_s / 3)
            await asyncio.sleep(step)
            left -= step

    async def _write(self, write: Callable[[AsyncSession], Awaitable[bool]]) -> None:
        async with self._sessions() as session, session.begin():
            if not await write(session):
                raise _Stop(lost=True)

    async def _end(
        self, platform: str, page_id: str, state: str, error: str = "", code: int = 0
    ) -> None:
        async with self._sessions() as session, session.begin():
            await store.end_history(
                session,
                platform,
                page_id,
                self._owner,
                state=state,
                now=self._clock(),
                error=error,
                code=code,
            )
