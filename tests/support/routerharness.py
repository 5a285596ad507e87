"""A real router gRPC server on PostgreSQL and Redis, with a stand-in subscriptions service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from pagewire.kit.authz import Policy
from pagewire.kit.channels import open_channel
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.grpcserver import start_server
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc, subscriptions_pb2_grpc
from services.router.access import ROUTER_ACCESS
from services.router.apply import ApplySettings, BeforeWrite
from services.router.assembly import RouterParts, build_router
from services.router.feed import FeedNotifier
from services.router.moderation import CommentActions
from services.router.mutex import RedisLocks, redis_client
from services.router.pages import PageDirectory
from services.router.profiles import ProfileFetcher
from services.router.send import Sender
from services.router.server import SERVICE_NAME
from tests.support.fakes import FakeSubscriptions, serve_fake_subscriptions
from tests.support.waiting import connected, wait_for

PAGE = "109384756201938"
USER = "7294015836620194"


@dataclass
class RouterHarness:
    stub: router_pb2_grpc.RouterServiceStub
    subscriptions: FakeSubscriptions
    sessions: async_sessionmaker
    router: RouterParts

    async def count(self, model) -> int:  # type: ignore[no-untyped-def]
        async with self.sessions() as session:
            return (await session.execute(select(func.count()).select_from(model))).scalar_one()

    @property
    def stale_writes(self) -> int:
        return self.router.applier.stale_writes

    async def pending(self) -> int:
        """Log entries not applied (nor parked) yet."""
        return (await self.router.monitor.read()).pending

    async def ingest(self, request: router_pb2.IngestRequest) -> router_pb2.IngestResponse:
        """Ingest, then wait until its events are applied (or parked): a read after it
        sees them, as a reader would after the apply lag."""
        reply = await self.stub.Ingest(request)
        await self.settled()
        return reply

    async def settled(self, timeout: float = 10.0) -> None:
        """Waits until every appended entry is applied or parked (the apply lag)."""

        async def nothing_pending() -> bool:
            return await self.pending() == 0 and self.router.applier.in_flight == 0

        await wait_for(nothing_pending, timeout=timeout, what="the apply stage to catch up")


@asynccontextmanager
async def router_harness(
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    *,
    ttl_ms: int = 5000,
    wait_ms: int = 3000,
    before_write: BeforeWrite | None = None,
    profiles: Callable[[async_sessionmaker], ProfileFetcher] | None = None,
    sender: Callable[[async_sessionmaker, RedisLocks, PageDirectory], Sender] | None = None,
    comment_actions: Callable[[async_sessionmaker, RedisLocks, PageDirectory], CommentActions]
    | None = None,
    apply: ApplySettings | None = None,
    parked_sweep_s: float = 0.2,
) -> AsyncIterator[RouterHarness]:
    """Starts the pieces, yields the harness, and stops everything afterwards."""
    fake = FakeSubscriptions()
    subs = await serve_fake_subscriptions(fake)
    channel = await connected(open_channel(f"127.0.0.1:{subs.port}"))
    engine = create_engine(database_url, "router")
    factory = sessions(engine)
    locks = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=ttl_ms, wait_ms=wait_ms)
    fetcher = profiles(factory) if profiles is not None else None
    pages = PageDirectory(subscriptions_pb2_grpc.SubscriptionsServiceStub(channel), 30, 2)
    notifier = FeedNotifier()
    built_sender = sender(factory, locks, pages) if sender is not None else None
    if built_sender is not None:
        built_sender._notifier = notifier  # the feed this router notifies
    built_actions = comment_actions(factory, locks, pages) if comment_actions else None
    if built_actions is not None:
        built_actions.notifier = notifier
    router = build_router(
        engine,
        factory,
        locks,
        pages,
        apply=apply or ApplySettings(idle_poll_s=0.05),
        sender=built_sender,
        comment_actions=built_actions,
        profiles=fetcher,
        notifier=notifier,
        parked_sweep_s=parked_sweep_s,
        before_write=before_write,
    )
    service = await start_server(
        names=[SERVICE_NAME],
        register=lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(router.servicer, s),
        access=Policy.build([ROUTER_ACCESS], allow_unauthenticated=True),
    )
    router.start()
    router_channel = await connected(open_channel(f"127.0.0.1:{service.port}"))
    try:
        yield RouterHarness(
            router_pb2_grpc.RouterServiceStub(router_channel), fake, factory, router
        )
    finally:
        await router_channel.close()
        await service.stop(grace=1)
        await router.stop()
        if fetcher is not None:
            await fetcher.close()
        await locks.close()
        await channel.close()
        await subs.stop(grace=1)
        await engine.dispose()


def event(kind: str, event_id: str, ts: int, *, user: str = USER, **fields) -> events_pb2.Event:  # type: ignore[no-untyped-def]
    """An event of `kind` (message, echo, edit, reaction, delivery, read, unsend, postback)."""
    base = dict(
        id=event_id,
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        user_id=user,
        direction=events_pb2.INBOUND,
        timestamp_ms=ts,
        raw_json="{}",
    )
    if kind in ("message", "echo", "unsend"):
        message = events_pb2.MessageEvent(
            mid=fields.get("mid", event_id),
            text=fields.get("text", ""),
            is_echo=kind == "echo",
            is_deleted=kind == "unsend",
        )
        direction = events_pb2.OUTBOUND if kind == "echo" else events_pb2.INBOUND
        return events_pb2.Event(**{**base, "direction": direction}, message=message)
    if kind == "edit":
        return events_pb2.Event(**base, edit=events_pb2.EditEvent(**fields))
    if kind == "reaction":
        return events_pb2.Event(**base, reaction=events_pb2.ReactionEvent(**fields))
    if kind == "delivery":
        return events_pb2.Event(**base, delivery=events_pb2.DeliveryEvent(**fields))
    if kind == "read":
        return events_pb2.Event(**base, read=events_pb2.ReadEvent(**fields))
    if kind == "postback":
        return events_pb2.Event(**base, postback=events_pb2.PostbackEvent(**fields))
    raise ValueError(kind)
