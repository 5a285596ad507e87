"""Items an older version kept raw (comments were `unsupported` `feed` items) become
comments: on `ReprocessEvents`, and by themselves once migration 0007 has run; again and
again without a second comment."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
from alembic import command

from pagewire.kit import migrate
from pagewire.normalize import normalize_envelope
from pagewire.proto import events_pb2, router_pb2
from services.router.store.models import CommentEdit
from tests.support.routerharness import PAGE, RouterHarness, router_harness


def kept_before(comment_fixtures_dir: Path, name: str) -> events_pb2.Event:
    """The fixture's event as the gateway stored it before comments were modelled."""
    body = json.loads((comment_fixtures_dir / f"{name}.json").read_text())
    [event] = normalize_envelope(body, received_at_ms=1_778_170_000_000)
    change = json.loads(event.raw_json)
    kept = events_pb2.Event()
    kept.CopyFrom(event)
    kept.ClearField(event.WhichOneof("kind"))
    kept.unsupported.kind = change["field"]
    created = (change.get("value") or {}).get("created_time")
    if created:
        kept.timestamp_ms = created * 1000
    return kept


@pytest.fixture
async def harness(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    async with router_harness(database_url, redis_url, redis_prefix) as running:
        running.subscriptions.connect(PAGE, "acme")
        yield running


async def comments(harness: RouterHarness) -> list[router_pb2.Comment]:
    listed = await harness.stub.ListComments(
        router_pb2.ListCommentsRequest(page_id=PAGE, page_size=100)
    )
    return list(listed.comments)


async def test_reprocess_turns_kept_feed_items_into_comments_once(
    harness: RouterHarness, comment_fixtures_dir: Path
) -> None:
    kept = [
        kept_before(comment_fixtures_dir, name)
        for name in ("feed_comment_add", "feed_comment_edited", "feed_status_add")
    ]
    stored = await harness.ingest(router_pb2.IngestRequest(events=kept))
    assert stored.stored == 3
    assert await comments(harness) == []
    # Then again, now that two of them are kept as comments: nothing is produced twice.
    for kinds in (["feed"], ["feed", "comment"]):
        marked = await harness.stub.ReprocessEvents(
            router_pb2.ReprocessEventsRequest(page_id=PAGE, kinds=kinds)
        )
        assert marked.marked == 3
        await harness.settled()
        [comment] = await comments(harness)
        assert comment.comment_id == json.loads(kept[0].raw_json)["value"]["comment_id"]
        assert comment.text != comment.original_text  # the edit applied over the add
        assert await harness.count(CommentEdit) == 1
    listed = await harness.stub.ListEvents(router_pb2.ListEventsRequest(page_id=PAGE))
    kinds = sorted(e.kind for e in listed.events)
    assert kinds == ["comment", "comment", "feed"]  # the status post stays kept raw
    status = await harness.stub.GetLogStatus(router_pb2.GetLogStatusRequest())
    assert status.renormalizing == 0


async def test_bad_reprocess_requests_mark_nothing(harness: RouterHarness) -> None:
    for request in (
        router_pb2.ReprocessEventsRequest(since_ms=-1),
        router_pb2.ReprocessEventsRequest(page_id="not-a-page"),
        router_pb2.ReprocessEventsRequest(kinds=[""]),
        router_pb2.ReprocessEventsRequest(platform=99),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stub.ReprocessEvents(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_migration_0007_reprocesses_what_was_kept(
    database_url: str, redis_url: str, redis_prefix: str, comment_fixtures_dir: Path
) -> None:
    """A database from before comments, with a feed comment kept raw: once upgraded, the
    router applies it as a comment without anyone asking."""
    command.downgrade(migrate._config("router", database_url), "0006_event_log")
    old = kept_before(comment_fixtures_dir, "feed_comment_add")
    plain = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, options="-c search_path=router") as conn:
        conn.execute(
            "INSERT INTO events (platform, page_id, user_id, event_id, kind, direction,"
            " timestamp_ms, standby, raw_json, received_at_ms, stored_at_ms, event, state,"
            " lease_until_ms, applied_at_ms, trace_parent)"
            " VALUES ('FACEBOOK', %s, '', %s, 'feed', 'INBOUND', %s, false, %s, %s, %s, %s,"
            " 'applied', 0, %s, '')",
            (
                PAGE,
                old.id,
                old.timestamp_ms,
                old.raw_json,
                old.received_at_ms,
                old.received_at_ms,
                old.SerializeToString(),
                old.received_at_ms,
            ),
        )
    migrate.upgrade("router", database_url)
    async with router_harness(database_url, redis_url, redis_prefix) as harness:
        harness.subscriptions.connect(PAGE, "acme")
        await harness.settled()
        [comment] = await comments(harness)
        assert comment.text == json.loads(old.raw_json)["value"]["message"]
