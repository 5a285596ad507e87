"""Contact profiles: fetched from (fake) Graph after commit, once per period, failures harmless."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pagewire import fakegraph
from pagewire.graph.client import GraphClient
from pagewire.graph.config import GraphSettings
from pagewire.proto import router_pb2
from services.router.profiles import ProfileFetcher
from services.router.store import Message
from tests.support.fakes import StandInVault
from tests.support.routerharness import PAGE, USER, RouterHarness, event, router_harness

TOKEN = "EAAGprofileTestToken000000000000000000000001"


@pytest.fixture
async def graph() -> AsyncIterator[fakegraph.FakeGraph]:
    fake = await fakegraph.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def setup(database_url: str, redis_url: str, redis_prefix: str, graph):  # type: ignore[no-untyped-def]
    vault = StandInVault(TOKEN)
    client = GraphClient(
        GraphSettings(url=graph.url, instagram_url=graph.url, max_attempts=1, timeout_s=5)
    )
    box: dict[str, ProfileFetcher] = {}

    def make(sessions):  # type: ignore[no-untyped-def]
        box["f"] = ProfileFetcher(sessions, client, vault, refresh_s=3600)
        return box["f"]

    async with router_harness(database_url, redis_url, redis_prefix, profiles=make) as harness:
        harness.subscriptions.connect(PAGE, "acme")
        yield harness, box["f"], vault
    await client.aclose()


async def conversation(harness: RouterHarness) -> router_pb2.Conversation:
    reply = await harness.stub.ListConversations(router_pb2.ListConversationsRequest(page_id=PAGE))
    (only,) = reply.conversations
    return only


async def test_profile_is_fetched_once_per_period(setup, graph) -> None:  # type: ignore[no-untyped-def]
    harness, fetcher, _ = setup
    graph.state.profiles[USER] = {
        "first_name": "Valentina",
        "last_name": "Ospina",
        "name": "Valentina Ospina",
        "profile_pic": "https://platform-lookaside.fbsbx.com/platform/profilepic/?psid=1",
    }
    for i in range(3):
        await harness.ingest(
            router_pb2.IngestRequest(events=[event("message", f"m_p{i}", 1000 + i)])
        )
        await fetcher.idle()
    contact = (await conversation(harness)).contact
    assert (contact.name, contact.first_name, contact.last_name) == (
        "Valentina Ospina",
        "Valentina",
        "Ospina",
    )
    assert contact.checked_at_ms > 0 and contact.error == ""
    lookups = graph.state.requests_to("GET", f"/{USER}")
    assert len(lookups) == 1
    # The token rode in the header; the URL (which ends up in logs and spans) has none.
    assert TOKEN not in str(lookups[0].get("query"))
    assert lookups[0]["query"]["fields"] == "first_name,last_name,name,profile_pic"


async def test_no_profile_is_recorded_and_not_retried(setup, graph) -> None:  # type: ignore[no-untyped-def]
    harness, fetcher, vault = setup
    graph.state.no_profile.add(USER)
    for i in range(2):
        await harness.ingest(
            router_pb2.IngestRequest(events=[event("message", f"m_n{i}", 1000 + i)])
        )
        await fetcher.idle()
    contact = (await conversation(harness)).contact
    assert contact.error == "graph error 100/2018218"
    assert contact.name == ""
    assert len(graph.state.requests_to("GET", f"/{USER}")) == 1
    assert await harness.count(Message) == 2
    assert vault.invalid == []


async def test_dead_token_marks_reauth_and_the_message_is_kept(setup, graph) -> None:  # type: ignore[no-untyped-def]
    harness, fetcher, vault = setup
    graph.state.fail(method="GET", path_contains=f"/{USER}", preset="190_460", times=1)
    reply = await harness.ingest(
        router_pb2.IngestRequest(events=[event("message", "m_dead", 1000)])
    )
    await fetcher.idle()
    assert reply.stored == 1
    assert vault.invalid == [(190, 460)]
    assert await harness.count(Message) == 1
