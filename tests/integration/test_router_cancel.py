"""A caller that gives up mid-Ingest (its deadline passed) leaves no connection inside a
transaction: the next Ingest is served at once, on SQLite (`make run`) and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pagewire.kit import migrate
from pagewire.kit.db import create_engine, sessions
from pagewire.proto import events_pb2
from services.router.assembly import build_router
from services.router.mutex import LocalLocks
from services.router.pages import PageInfo
from services.router.store import Message
from tests.support.waiting import wait_for

PAGE = "109384756201938"


class OnePage:
    async def page(self, platform: int, page_id: str, *, fresh: bool = False) -> PageInfo:
        return PageInfo("acme", False)

    def remember(self, platform: int, page_id: str, account_id: str) -> None:
        return None

    def forget(self, platform: int, page_id: str) -> None:
        return None


def events(prefix: str, count: int) -> list[events_pb2.Event]:
    return [
        events_pb2.Event(
            id=f"{prefix}{i}",
            platform=events_pb2.FACEBOOK,
            page_id=PAGE,
            user_id=f"u{i % 50}",
            direction=events_pb2.INBOUND,
            timestamp_ms=1_778_163_000_000 + i,
            raw_json="{}",
            message=events_pb2.MessageEvent(mid=f"{prefix}{i}", text="hola"),
        )
        for i in range(count)
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        found = f"sqlite+aiosqlite:///{tmp_path / 'router.db'}"
        await asyncio.to_thread(migrate.upgrade, "router", found)
        return found
    return request.getfixturevalue("database_url")


async def test_a_cancelled_ingest_then_another(url: str) -> None:
    engine = create_engine(url, "router")
    factory = sessions(engine)
    router = build_router(engine, factory, LocalLocks(wait_ms=3000), OnePage())  # type: ignore[arg-type]
    router.start()
    try:
        # A 1,000-event POST whose caller gives up before the commit answers.
        big = asyncio.ensure_future(router.appender.ingest(events("m_big_", 1000)))
        await asyncio.sleep(0)  # let it reach the commit (a step of the loop, not a wait)
        big.cancel()
        with pytest.raises(asyncio.CancelledError):
            await big
        started = time.monotonic()
        after = await asyncio.wait_for(router.appender.ingest(events("m_after_", 5)), 4)
        assert after.stored == 5
        assert time.monotonic() - started < 2.0
        # What the cancelled call sent was committed or not, but never half: Meta's retry
        # of it stores what is missing, once.
        again = await router.appender.ingest(events("m_big_", 1000))
        assert again.stored + again.duplicates == 1000

        async def applied() -> bool:
            return (await router.monitor.read()).pending == 0

        await wait_for(applied, timeout=30, what="the apply stage")
        async with factory() as session:
            stored = (await session.execute(select(func.count()).select_from(Message))).scalar_one()
        assert stored == 1005
    finally:
        await router.stop()
        await engine.dispose()
