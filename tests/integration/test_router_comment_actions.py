"""ReplyToComment and ModerateComment through the (fake) Graph API: one call per key, one
private reply per comment and only within 7 days, the Page's own reply not stored twice
when its webhook comes, hide/unhide/delete stored, Graph's refusals by code."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from pagewire import fakegraph
from pagewire.graph.client import GraphClient
from pagewire.graph.config import GraphSettings
from pagewire.proto import events_pb2, router_pb2
from services.router.moderation import CommentActions
from tests.support.fakes import StandInVault
from tests.support.routerharness import PAGE, RouterHarness, router_harness

TOKEN = "EAAGcommentActionsToken000000000000000000001"
POST = f"{PAGE}_9001"
COMMENT = f"{POST[len(PAGE) + 1 :]}_5501"
IG_ACCOUNT = "17841405822304914"
DAY = 24 * 3600 * 1000
FB = events_pb2.FACEBOOK


@pytest.fixture
async def graph() -> AsyncIterator[fakegraph.FakeGraph]:
    fake = await fakegraph.start()
    yield fake
    await fake.stop()


@pytest.fixture
def vault() -> StandInVault:
    return StandInVault(TOKEN)


@pytest.fixture
async def harness(  # type: ignore[no-untyped-def]
    database_url, redis_url, redis_prefix, graph, vault
) -> AsyncIterator[RouterHarness]:
    client = GraphClient(
        GraphSettings(url=graph.url, instagram_url=graph.url, retry_base_s=0.02, retry_max_wait_s=2)
    )

    def make(sessions, locks, pages):  # type: ignore[no-untyped-def]
        return CommentActions(sessions, locks, pages, client, vault)

    async with router_harness(
        database_url, redis_url, redis_prefix, comment_actions=make
    ) as running:
        running.subscriptions.connect(PAGE, "acme")
        running.subscriptions.connect(IG_ACCOUNT, "acme", platform=events_pb2.INSTAGRAM)
        yield running
    await client.aclose()


def now_ms() -> int:
    return int(time.time() * 1000)


def customer_comment(
    comment_id: str = COMMENT,
    *,
    written_ms: int | None = None,
    platform: int = FB,
    page: str = PAGE,
    post: str = POST,
    author: str = "7001",
    parent: str = "",
    event_id: str = "",
    text: str = "¿Tienen envío a Quito?",
) -> router_pb2.IngestRequest:
    written = now_ms() - 60_000 if written_ms is None else written_ms
    return router_pb2.IngestRequest(
        events=[
            events_pb2.Event(
                id=event_id or f"comment:{comment_id}:add",
                platform=platform,
                page_id=page,
                direction=events_pb2.OUTBOUND if author == page else events_pb2.INBOUND,
                timestamp_ms=written,
                raw_json="{}",
                comment=events_pb2.CommentEvent(
                    comment_id=comment_id,
                    post_id=post,
                    parent_id=parent or post,
                    verb="add",
                    text=text,
                    author_id=author,
                    author_name="Ana Gómez",
                    created_time_ms=written,
                    field="feed" if platform == FB else "comments",
                ),
            )
        ]
    )


def ref(comment_id: str = COMMENT, platform: int = FB, page: str = PAGE) -> router_pb2.CommentRef:
    return router_pb2.CommentRef(platform=platform, page_id=page, comment_id=comment_id)


def reply(
    key: str, text: str = "Sí, enviamos a todo Ecuador", *, private: bool = False, **kw: object
) -> router_pb2.ReplyToCommentRequest:
    return router_pb2.ReplyToCommentRequest(
        comment=kw.pop("comment", None) or ref(),  # type: ignore[arg-type]
        text=text,
        private=private,
        idempotency_key=key,
    )


def moderate(key: str, action: int, **kw: object) -> router_pb2.ModerateCommentRequest:
    return router_pb2.ModerateCommentRequest(
        comment=kw.pop("comment", None) or ref(),  # type: ignore[arg-type]
        action=action,  # type: ignore[arg-type]
        idempotency_key=key,
    )


async def comments(harness: RouterHarness, page: str = PAGE) -> dict[str, router_pb2.Comment]:
    listed = await harness.stub.ListComments(
        router_pb2.ListCommentsRequest(page_id=page, page_size=100)
    )
    return {c.comment_id: c for c in listed.comments}


async def failed(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_a_public_reply_is_stored_once_even_when_its_webhook_comes(
    harness: RouterHarness, graph: fakegraph.FakeGraph, vault: StandInVault
) -> None:
    await harness.ingest(customer_comment())
    answer = await harness.stub.ReplyToComment(reply("r-1"))
    assert answer.state == router_pb2.ACCEPTED and not answer.replayed
    (call,) = graph.state.requests_to("POST", f"/{COMMENT}/comments")
    assert call["form"]["message"] == "Sí, enviamos a todo Ecuador"
    assert call["bearer_token"] == TOKEN and TOKEN not in json.dumps(call["query"])
    reply_id = answer.reply.comment_id
    assert reply_id and answer.reply.from_page and answer.reply.parent_id == COMMENT
    # Meta's webhook for the Page's own reply, arriving after the answer: nothing new.
    await harness.ingest(
        customer_comment(reply_id, author=PAGE, parent=COMMENT, text="Sí, enviamos a todo Ecuador")
    )
    stored = await comments(harness)
    assert sorted(stored) == sorted([COMMENT, reply_id])
    assert stored[reply_id].text == "Sí, enviamos a todo Ecuador"
    assert len(vault.on_behalf_of) == 1  # decrypted for this one call


async def test_the_same_key_calls_graph_once(
    harness: RouterHarness, graph: fakegraph.FakeGraph
) -> None:
    await harness.ingest(customer_comment())
    first = await harness.stub.ReplyToComment(reply("r-same"))
    again = await harness.stub.ReplyToComment(reply("r-same"))
    assert again.replayed and again.reply.comment_id == first.reply.comment_id
    assert len(graph.state.requests_to("POST", "/comments")) == 1
    error = await failed(harness.stub.ReplyToComment(reply("r-same", "something else")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(graph.state.requests_to("POST", "/comments")) == 1


async def test_one_private_reply_per_comment(
    harness: RouterHarness, graph: fakegraph.FakeGraph
) -> None:
    await harness.ingest(customer_comment())
    first = await harness.stub.ReplyToComment(reply("p-1", "Te escribo por aquí", private=True))
    assert first.state == router_pb2.ACCEPTED and first.mid
    (call,) = graph.state.requests_to("POST", f"/{PAGE}/messages")
    assert json.loads(call["form"]["recipient"]) == {"comment_id": COMMENT}
    # The same key again is the same reply, not a second one.
    again = await harness.stub.ReplyToComment(reply("p-1", "Te escribo por aquí", private=True))
    assert again.replayed and again.mid == first.mid
    # Another key: Meta allows one private reply per comment; Graph is not called.
    error = await failed(harness.stub.ReplyToComment(reply("p-2", "otra vez", private=True)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "one per comment" in error.details()
    assert len(graph.state.requests_to("POST", f"/{PAGE}/messages")) == 1


async def test_a_private_reply_after_seven_days_is_refused_without_calling_graph(
    harness: RouterHarness, graph: fakegraph.FakeGraph
) -> None:
    await harness.ingest(customer_comment(written_ms=now_ms() - 8 * DAY))
    error = await failed(harness.stub.ReplyToComment(reply("p-old", "hola", private=True)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "within 7 days" in error.details()
    assert graph.state.requests_to("POST", "/messages") == []
    # A public reply has no such window.
    assert (await harness.stub.ReplyToComment(reply("r-old"))).state == router_pb2.ACCEPTED


async def test_hide_unhide_and_delete_are_stored(
    harness: RouterHarness, graph: fakegraph.FakeGraph
) -> None:
    await harness.ingest(customer_comment())
    hidden = await harness.stub.ModerateComment(moderate("h-1", router_pb2.HIDE))
    assert hidden.state == router_pb2.ACCEPTED and hidden.comment.hidden
    (call,) = graph.state.requests_to("POST", f"/{COMMENT}")
    assert call["form"] == {"is_hidden": "true"}
    assert (await comments(harness))[COMMENT].hidden
    shown = await harness.stub.ModerateComment(moderate("u-1", router_pb2.UNHIDE))
    assert not shown.comment.hidden and not (await comments(harness))[COMMENT].hidden
    deleted = await harness.stub.ModerateComment(moderate("d-1", router_pb2.DELETE))
    assert deleted.state == router_pb2.ACCEPTED
    assert len(graph.state.requests_to("DELETE", f"/{COMMENT}")) == 1
    gone = (await comments(harness))[COMMENT]
    assert gone.removed and gone.text == ""
    # Nothing more may be done with a removed comment.
    error = await failed(harness.stub.ReplyToComment(reply("r-after")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_instagram_uses_its_own_edges(
    harness: RouterHarness, graph: fakegraph.FakeGraph
) -> None:
    media = "17990000000000001"
    ig_comment = "17850000000000002"
    await harness.ingest(
        customer_comment(
            ig_comment, platform=events_pb2.INSTAGRAM, page=IG_ACCOUNT, post=media, parent=media
        )
    )
    target = ref(ig_comment, events_pb2.INSTAGRAM, IG_ACCOUNT)
    answer = await harness.stub.ReplyToComment(reply("ig-r", comment=target))
    assert answer.state == router_pb2.ACCEPTED
    assert len(graph.state.requests_to("POST", f"/{ig_comment}/replies")) == 1
    await harness.stub.ModerateComment(moderate("ig-h", router_pb2.HIDE, comment=target))
    (call,) = [r for r in graph.state.requests_to("POST") if r["path"].endswith(f"/{ig_comment}")]
    assert call["form"] == {"hide": "true"}


async def test_graph_refusals_by_code(
    harness: RouterHarness, graph: fakegraph.FakeGraph, vault: StandInVault
) -> None:
    await harness.ingest(customer_comment())
    graph.state.fail(preset="100", times=1)
    refused = await harness.stub.ReplyToComment(reply("r-100"))
    assert (refused.state, refused.error_code) == (router_pb2.REJECTED, 100)
    # A refused key stays refused: replayed, Graph not called again.
    again = await harness.stub.ReplyToComment(reply("r-100"))
    assert again.replayed and again.state == router_pb2.REJECTED
    assert len(graph.state.requests_to("POST", "/comments")) == 1
    # An invalid token: re-authorization, and the caller is told so.
    graph.state.fail(preset="190_460", times=1)
    error = await failed(harness.stub.ModerateComment(moderate("h-190", router_pb2.HIDE)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "re-authorization" in error.details()
    assert vault.invalid == [(190, 460)]


async def test_bad_requests_change_nothing(
    harness: RouterHarness, graph: fakegraph.FakeGraph
) -> None:
    await harness.ingest(customer_comment())
    cases = [
        (reply("", "x"), grpc.StatusCode.INVALID_ARGUMENT),
        (reply("k", "   "), grpc.StatusCode.INVALID_ARGUMENT),
        (reply("k", "x" * 8001), grpc.StatusCode.INVALID_ARGUMENT),
        (reply("k", comment=ref("unknown_1")), grpc.StatusCode.NOT_FOUND),
        (router_pb2.ReplyToCommentRequest(text="x", idempotency_key="k"), None),
    ]
    for request, code in cases:
        error = await failed(harness.stub.ReplyToComment(request))
        assert error.code() == (code or grpc.StatusCode.INVALID_ARGUMENT), request
    error = await failed(harness.stub.ModerateComment(moderate("m", 0)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert graph.state.requests == [] or all(
        r["path"].startswith("/_fake") for r in graph.state.requests
    )


async def test_the_token_and_the_text_stay_out_of_logs(
    harness: RouterHarness, caplog: pytest.LogCaptureFixture, graph: fakegraph.FakeGraph
) -> None:
    caplog.set_level(logging.DEBUG)
    await harness.ingest(customer_comment(text="mi número es 0991234567"))
    graph.state.fail(preset="100", times=1)
    await harness.stub.ReplyToComment(reply("r-log", "respuesta privada 42", private=True))
    logs = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (TOKEN, "0991234567", "respuesta privada 42"):
        assert secret not in logs
