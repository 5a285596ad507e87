"""The router's pieces wired together once: the composition root and the tests use this.

Appender (the ACK path) → log ← apply workers (and the parked sweep, the backlog
monitor) → conversations → readers; the sender beside them. `start` begins the
background work, `stop` ends it after the server stopped taking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.router.apply import Applier, ApplySettings, BeforeWrite, LogMonitor
from services.router.feed import FeedNotifier
from services.router.ingest import Appender
from services.router.moderation import CommentActions
from services.router.mutex import ConversationLocks
from services.router.pages import PageDirectory
from services.router.parking import Pages
from services.router.profiles import ProfileFetcher
from services.router.reading import History
from services.router.send import Sender
from services.router.server import RouterServiceServicer


@dataclass
class RouterParts:
    """Everything one router process runs."""

    appender: Appender
    applier: Applier
    pages: Pages
    history: History
    monitor: LogMonitor
    servicer: RouterServiceServicer
    parked_sweep_s: float
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.applier.start()
        self._tasks.append(asyncio.create_task(self.monitor.run(self._stop), name="log-monitor"))
        if self.parked_sweep_s > 0:
            self._tasks.append(
                asyncio.create_task(
                    self.pages.sweep_forever(self.parked_sweep_s, self._stop), name="parked-sweep"
                )
            )

    async def stop(self) -> None:
        self._stop.set()
        await self.appender.close()
        await self.applier.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def build_router(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    locks: ConversationLocks,
    directory: PageDirectory,
    *,
    apply: ApplySettings | None = None,
    sender: Sender | None = None,
    comment_actions: CommentActions | None = None,
    profiles: ProfileFetcher | None = None,
    notifier: FeedNotifier | None = None,
    parked_sweep_s: float = 10.0,
    before_write: BeforeWrite | None = None,
) -> RouterParts:
    notifier = notifier or FeedNotifier()
    applier_box: list[Applier] = []

    def wake() -> None:
        if applier_box:
            applier_box[0].wake()

    pages = Pages(sessions, directory, wake=wake)
    applier = Applier(
        engine,
        sessions,
        locks,
        pages,
        settings=apply or ApplySettings(),
        notifier=notifier,
        profiles=profiles,
        before_write=before_write,
    )
    applier_box.append(applier)
    appender = Appender(sessions, on_commit=applier.wake)
    history = History(sessions)
    monitor = LogMonitor(sessions)
    servicer = RouterServiceServicer(
        appender=appender,
        pages=pages,
        history=history,
        monitor=monitor,
        notifier=notifier,
        sessions=sessions,
        sender=sender,
        comment_actions=comment_actions,
    )
    return RouterParts(appender, applier, pages, history, monitor, servicer, parked_sweep_s)
