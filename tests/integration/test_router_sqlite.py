"""The embedded default of `make run`: the router on SQLite with the in-process lock."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pagewire.kit import migrate
from pagewire.kit.db import create_engine, sessions
from pagewire.normalize import normalize_envelope
from services.router.assembly import build_router
from services.router.mutex import LocalLocks
from services.router.pages import PageInfo
from tests.support.waiting import wait_for


class OnePage:
    """Every page belongs to acme (what subscriptions would say)."""

    async def page(self, platform: int, page_id: str, *, fresh: bool = False) -> PageInfo:
        return PageInfo("acme", False)

    def remember(self, platform: int, page_id: str, account_id: str) -> None:
        return None

    def forget(self, platform: int, page_id: str) -> None:
        return None


async def test_fixtures_on_sqlite_are_stored_once_and_converge(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'router.db'}"
    await asyncio.to_thread(migrate.upgrade, "router", url)
    engine = create_engine(url, "router")
    factory = sessions(engine)
    router = build_router(engine, factory, LocalLocks(wait_ms=3000), OnePage())  # type: ignore[arg-type]
    router.start()
    try:
        files = sorted((fixtures_dir / "meta").glob("[0-9]*.json"))
        batches = [normalize_envelope(json.loads(p.read_bytes())) for p in files]
        first = [await router.appender.ingest(events) for events in batches if events]
        again = [await router.appender.ingest(events) for events in batches if events]
        assert sum(r.stored for r in first) == sum(len(b) for b in batches)
        assert sum(r.stored for r in again) == 0

        async def applied() -> bool:
            return (await router.monitor.read()).pending == 0

        await wait_for(applied, what="the apply stage on SQLite")
        views, _ = await router.history.messages(
            conversation_id="",
            page_id="109384756201938",
            user_id="7294015836620194",
            platform=0,
            page_size=100,
            page_token="",
        )
        texts = [v.row.text for v in views]
        assert "Hola, ¿tienen envío a Bogotá?" in texts  # 01 edited by 14
        assert any(v.row.status == "READ" for v in views)  # 03 read by 06
    finally:
        await router.stop()
        await engine.dispose()
