"""Guarantee 4 as a property: any permutation of a conversation's events, with duplicates,
split across two router processes and delivered concurrently, ends in the same stored state
as in-order delivery."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from tests.support.fakes import FakeSubscriptions, serve_fake_subscriptions
from tests.support.routerharness import PAGE, event
from tests.support.stack import Stack
from tests.support.waiting import free_port, wait_for

_users = itertools.count(1)


@pytest.fixture
async def routers(
    tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[list[router_pb2_grpc.RouterServiceStub]]:
    """Two router processes on one PostgreSQL and Redis, and a stand-in subscriptions service."""
    fake = FakeSubscriptions()
    fake.connect(PAGE, "acme")
    subscriptions = await serve_fake_subscriptions(fake)
    stack = Stack.create(
        tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        graph_url="http://127.0.0.1:9",
        keyring="{}",
    )
    stack.env["PAGEWIRE_SUBSCRIPTIONS_ADDR"] = f"127.0.0.1:{subscriptions.port}"
    channels = []
    try:
        for name in ("router1", "router2"):
            proc = await stack.start("router", name=name, PAGEWIRE_ROUTER_PORT=str(free_port()))
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}"))
        yield [router_pb2_grpc.RouterServiceStub(c) for c in channels]
    finally:
        for channel in channels:
            await channel.close()
        await stack.stop_all()
        await subscriptions.stop(grace=0)


@st.composite
def conversations(draw: st.DrawFn) -> list[tuple]:
    """A conversation as abstract steps; `materialize` turns them into events for one user."""
    steps: list[tuple] = []
    clock = 1_778_163_000_000
    mids = []
    for i in range(draw(st.integers(2, 6))):
        clock += draw(st.sampled_from([0, 1000, 2000]))  # equal timestamps happen
        kind = draw(st.sampled_from(["message", "echo"]))
        steps.append((kind, f"m{i}", clock, f"text {i}"))
        mids.append((kind, f"m{i}", clock))
    for kind, mid, ts in mids:
        if kind == "message":
            for n in range(draw(st.integers(0, 2))):
                steps.append(("edit", mid, ts + 500 + n, f"{mid} edit {n + 1}", n + 1))
            if draw(st.booleans()) and draw(st.booleans()):
                steps.append(("unsend", mid, ts + 900))
        for r in range(draw(st.integers(0, 2))):
            action = draw(st.sampled_from(["react", "unreact"]))
            steps.append(("reaction", mid, ts + 100 + r, action, draw(st.sampled_from("👍❤😮"))))
    stamps = [ts for _, _, ts in mids]
    for _ in range(draw(st.integers(0, 2))):
        picked = draw(st.lists(st.sampled_from([m for _, m, _ in mids]), max_size=2, unique=True))
        steps.append(("delivery", draw(st.sampled_from(stamps)), picked))
    for _ in range(draw(st.integers(0, 2))):
        steps.append(("read", draw(st.sampled_from(stamps))))
    return steps


def materialize(steps: list[tuple], user: str) -> list[events_pb2.Event]:
    """Events of `steps` for one user; every id and mid is unique to that user."""
    out = []
    for n, step in enumerate(steps):
        kind = step[0]
        if kind in ("message", "echo"):
            _, mid, ts, text = step
            out.append(event(kind, f"{user}-{mid}", ts, user=user, text=text))
        elif kind == "edit":
            _, mid, ts, text, num = step
            out.append(
                event(
                    "edit",
                    f"{user}-e{n}",
                    ts,
                    user=user,
                    mid=f"{user}-{mid}",
                    text=text,
                    num_edit=num,
                )
            )
        elif kind == "unsend":
            _, mid, ts = step
            out.append(event("unsend", f"{user}-d{n}", ts, user=user, mid=f"{user}-{mid}"))
        elif kind == "reaction":
            _, mid, ts, action, emoji = step
            out.append(
                event(
                    "reaction",
                    f"{user}-r{n}",
                    ts,
                    user=user,
                    mid=f"{user}-{mid}",
                    action=action,
                    emoji="" if action == "unreact" else emoji,
                )
            )
        elif kind == "delivery":
            _, watermark, mids = step
            out.append(
                event(
                    "delivery",
                    f"{user}-v{n}",
                    watermark,
                    user=user,
                    watermark_ms=watermark,
                    mids=[f"{user}-{m}" for m in mids],
                )
            )
        else:
            _, watermark = step
            out.append(event("read", f"{user}-s{n}", watermark, user=user, watermark_ms=watermark))
    return out


async def state(stub: router_pb2_grpc.RouterServiceStub, user: str) -> tuple:
    """What a reader sees of one conversation, with the user's id factored out."""
    listed = await stub.ListMessages(
        router_pb2.ListMessagesRequest(page_id=PAGE, user_id=user, page_size=1000)
    )
    messages = []
    for m in listed.messages:
        m.ClearField("id")
        m.ClearField("conversation_id")
        for r in m.reactions:
            r.user_id = ""
        text = m.SerializeToString(deterministic=True).replace(user.encode(), b"U")
        messages.append(text)
    conversation = (
        await stub.ListConversations(
            router_pb2.ListConversationsRequest(page_id=PAGE, page_size=1000)
        )
    ).conversations
    (mine,) = [c for c in conversation if c.user_id == user]
    summary = (
        mine.message_count,
        mine.last_event_ms,
        mine.delivery_watermark_ms,
        mine.read_watermark_ms,
    )
    return summary, messages


async def caught_up(router: router_pb2_grpc.RouterServiceStub) -> None:
    """Until the apply stage (of both routers: one log) has nothing pending."""

    async def nothing_pending() -> bool:
        status = await router.GetLogStatus(router_pb2.GetLogStatusRequest(), timeout=5)
        return status.pending == 0

    await wait_for(nothing_pending, timeout=30, what="the apply stage to catch up")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=conversations(), seed=st.integers(0, 2**32 - 1))
async def test_any_order_any_duplicates_two_routers_same_state(
    routers: list[router_pb2_grpc.RouterServiceStub], steps: list[tuple], seed: int
) -> None:
    run = next(_users)
    in_order_user, shuffled_user = f"8{run:015d}", f"9{run:015d}"

    for item in materialize(steps, in_order_user):
        await routers[0].Ingest(router_pb2.IngestRequest(events=[item]))
        await caught_up(routers[0])  # in order: each item applied before the next arrives

    rng = random.Random(seed)
    shuffled = materialize(steps, shuffled_user)
    shuffled += rng.sample(shuffled, k=rng.randint(0, len(shuffled)))  # redeliveries
    rng.shuffle(shuffled)
    batches, i = [], 0
    while i < len(shuffled):
        size = rng.randint(1, 3)
        batches.append(shuffled[i : i + size])
        i += size
    await asyncio.gather(
        *(
            routers[rng.randint(0, 1)].Ingest(router_pb2.IngestRequest(events=batch), timeout=20)
            for batch in batches
        )
    )
    await caught_up(routers[0])
    assert await state(routers[1], shuffled_user) == await state(routers[0], in_order_user)
