"""Comment threads in the router over real gRPC, PostgreSQL and Redis: every verb folded,
any order and duplication converging, reactions counted, the feed's comment changes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagewire.proto import events_pb2, router_pb2
from tests.support.routerharness import PAGE, RouterHarness, router_harness

POST = "109384756201938_9001"


@pytest.fixture
async def harness(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    async with router_harness(database_url, redis_url, redis_prefix) as running:
        running.subscriptions.connect(PAGE, "acme")
        yield running


def comment(
    event_id: str,
    ts: int,
    verb: str,
    comment_id: str = "c1",
    *,
    post: str = POST,
    text: str = "",
    parent: str = "",
    author: str = "7001",
    name: str = "Ana Gómez",
    created: int = 1_000,
) -> events_pb2.Event:
    return events_pb2.Event(
        id=event_id,
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        direction=events_pb2.OUTBOUND if author == PAGE else events_pb2.INBOUND,
        timestamp_ms=ts,
        raw_json="{}",
        comment=events_pb2.CommentEvent(
            comment_id=comment_id,
            post_id=post,
            parent_id=parent,
            verb=verb,
            text=text,
            author_id=author,
            author_name=name,
            created_time_ms=created,
            field="feed",
        ),
    )


def reaction(
    event_id: str, ts: int, verb: str, user: str, kind: str = "like", *, post: str = POST
) -> events_pb2.Event:
    return events_pb2.Event(
        id=event_id,
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        direction=events_pb2.INBOUND,
        timestamp_ms=ts,
        raw_json="{}",
        post_reaction=events_pb2.PostReactionEvent(
            post_id=post, reaction_type=kind, verb=verb, user_id=user
        ),
    )


async def listed(harness: RouterHarness, **filters: str) -> router_pb2.ListCommentsResponse:
    return await harness.stub.ListComments(
        router_pb2.ListCommentsRequest(page_id=PAGE, page_size=1000, **filters)
    )


async def test_every_verb_is_folded(harness: RouterHarness) -> None:
    await harness.ingest(
        router_pb2.IngestRequest(
            events=[
                comment("e1", 1000, "add", text="¿Tienen talla 38?"),
                comment("e2", 2000, "edited", text="¿Tienen talla 38 en azul?"),
                comment("e3", 2500, "add", "c2", text="Sí 🙂", parent="c1", author=PAGE),
                comment("e4", 3000, "hide"),
                comment("e5", 4000, "add", "c3", text="spam"),
                comment("e6", 5000, "remove", "c3"),
                reaction("r1", 1100, "add", "u1"),
                reaction("r2", 1200, "add", "u2", "love"),
                reaction("r3", 1300, "add", "u3", "love"),
                reaction("r4", 1400, "remove", "u3", "love"),
            ]
        )
    )
    reply = await listed(harness)
    by_id = {c.comment_id: c for c in reply.comments}
    first, answer, spam = by_id["c1"], by_id["c2"], by_id["c3"]
    assert (first.text, first.original_text, first.hidden) == (
        "¿Tienen talla 38 en azul?",
        "¿Tienen talla 38?",
        True,
    )
    assert [e.text for e in first.edits] == ["¿Tienen talla 38 en azul?"]
    assert (first.author_id, first.author_name, first.post_id) == ("7001", "Ana Gómez", POST)
    assert (answer.parent_id, answer.from_page) == ("c1", True)
    assert (spam.removed, spam.text, spam.original_text) == (True, "", "")
    (thread,) = reply.threads
    assert (thread.post_id, thread.comment_count, thread.account_id) == (POST, 3, "acme")
    assert dict(thread.reactions) == {"like": 1, "love": 1}
    mine = await listed(harness, author_id=PAGE)
    assert [c.comment_id for c in mine.comments] == ["c2"]


async def test_an_edit_before_its_comment_is_kept_and_applied(harness: RouterHarness) -> None:
    await harness.ingest(
        router_pb2.IngestRequest(events=[comment("e2", 2000, "edited", text="the new text")])
    )
    await harness.ingest(
        router_pb2.IngestRequest(events=[comment("e1", 1000, "add", text="the first text")])
    )
    (only,) = (await listed(harness)).comments
    assert (only.text, only.original_text) == ("the new text", "the first text")


async def test_a_remove_wins_for_good(harness: RouterHarness) -> None:
    for event in (
        comment("e3", 3000, "remove"),
        comment("e1", 1000, "add", text="x"),
        comment("e4", 4000, "edited", text="y"),
        comment("e5", 5000, "unhide"),
    ):
        await harness.ingest(router_pb2.IngestRequest(events=[event]))
    (only,) = (await listed(harness)).comments
    assert (only.removed, only.text, only.original_text) == (True, "", "")
    assert [e.text for e in only.edits] == [""]  # the history keeps no text either


async def test_the_newest_edit_wins_by_metas_time(harness: RouterHarness) -> None:
    await harness.ingest(
        router_pb2.IngestRequest(
            events=[
                comment("e1", 1000, "add", text="a"),
                comment("e3", 3000, "edited", text="c"),
                comment("e2", 2000, "edited", text="b"),
            ]
        )
    )
    (only,) = (await listed(harness)).comments
    assert only.text == "c"
    assert [e.text for e in only.edits] == ["b", "c"]


async def test_the_feed_carries_comment_changes(harness: RouterHarness) -> None:
    await harness.ingest(
        router_pb2.IngestRequest(
            events=[
                comment("e1", 1000, "add", text="hola"),
                comment("e2", 2000, "edited", text="hola!"),
                comment("e3", 3000, "hide"),
                comment("e4", 4000, "remove"),
                reaction("r1", 1100, "add", "u1"),
            ]
        )
    )
    kinds = []
    call = harness.stub.StreamEvents(router_pb2.StreamEventsRequest(account_id="acme"))
    async for change in call:
        kinds.append(router_pb2.ChangeKind.Name(change.kind))
        if change.kind != router_pb2.POST_REACTION_CHANGED:
            assert change.comment.comment_id == "c1"
        assert change.thread.post_id == POST
        if len(kinds) == 5:
            call.cancel()
            break
    assert kinds == [
        "COMMENT_CREATED",
        "COMMENT_EDITED",
        "COMMENT_HIDDEN",
        "COMMENT_REMOVED",
        "POST_REACTION_CHANGED",
    ]


def _thread(post: str) -> list[events_pb2.Event]:
    """A thread's items, with ids unique to the thread."""
    tag = post.rsplit("_", 1)[-1]

    def cid(n: str) -> str:
        return f"{tag}_{n}"

    return [
        comment(f"{tag}:1", 1000, "add", cid("1"), post=post, text="first"),
        comment(f"{tag}:2", 2000, "edited", cid("1"), post=post, text="first, edited"),
        comment(f"{tag}:3", 3000, "edited", cid("1"), post=post, text="first, edited again"),
        comment(f"{tag}:4", 2500, "add", cid("2"), post=post, text="reply", parent=cid("1")),
        comment(f"{tag}:5", 2600, "hide", cid("2"), post=post),
        comment(f"{tag}:6", 2700, "unhide", cid("2"), post=post),
        comment(f"{tag}:7", 2800, "hide", cid("2"), post=post),
        comment(f"{tag}:8", 4000, "add", cid("3"), post=post, text="bye"),
        comment(f"{tag}:9", 5000, "remove", cid("3"), post=post),
        comment(f"{tag}:10", 6000, "add", cid("4"), post=post, text="page", author=PAGE),
        reaction(f"{tag}:r1", 1000, "add", "u1", post=post),
        reaction(f"{tag}:r2", 1100, "edit", "u1", "wow", post=post),
        reaction(f"{tag}:r3", 1200, "add", "u2", "love", post=post),
        reaction(f"{tag}:r4", 1300, "remove", "u2", "love", post=post),
    ]


def _shape(reply: router_pb2.ListCommentsResponse, post: str) -> object:
    tag = post.rsplit("_", 1)[-1]
    comments = []
    for c in reply.comments:
        if c.post_id != post:
            continue
        c.ClearField("id")
        c.ClearField("thread_id")
        c.ClearField("post_id")
        c.comment_id = c.comment_id.removeprefix(f"{tag}_")
        c.parent_id = c.parent_id.removeprefix(f"{tag}_")
        comments.append(c.SerializeToString(deterministic=True))
    threads = [
        (t.comment_count, t.last_activity_ms, sorted(t.reactions.items()))
        for t in reply.threads
        if t.post_id == post
    ]
    return sorted(comments), threads


_runs = iter(range(10**6))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1))
async def test_any_order_and_duplication_of_a_thread_converges(
    harness: RouterHarness, seed: int
) -> None:
    run = next(_runs)
    in_order, shuffled = f"{PAGE}_{2 * run + 1}", f"{PAGE}_{2 * run + 2}"
    for event in _thread(in_order):
        await harness.ingest(router_pb2.IngestRequest(events=[event]))
    rng = random.Random(seed)
    items = _thread(shuffled)
    items += rng.sample(items, k=rng.randint(0, len(items)))  # redeliveries
    rng.shuffle(items)
    i = 0
    while i < len(items):
        size = rng.randint(1, 4)
        await harness.stub.Ingest(router_pb2.IngestRequest(events=items[i : i + size]))
        i += size
    await harness.settled()
    reply = await listed(harness)
    assert _shape(reply, shuffled) == _shape(reply, in_order)
