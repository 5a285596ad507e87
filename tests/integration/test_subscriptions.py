"""The subscriptions service against a real tokens server, the fake Graph API and a fake router."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pagewire import fakegraph
from pagewire.graph import (
    Clock,
    GraphClient,
    GraphError,
    GraphSettings,
    PagesApi,
)
from pagewire.kit import migrate
from pagewire.kit.authz import Policy
from pagewire.kit.channels import open_channel
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.grpcserver import GrpcService, start_server
from pagewire.kit.settings import Secret, SettingsError
from pagewire.kit.timeutil import now_ms
from pagewire.proto import (
    events_pb2,
    router_pb2,
    router_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from services.subscriptions import server as sub_server
from services.subscriptions import store as sub_store
from services.subscriptions.access import SUBSCRIPTIONS_ACCESS
from services.subscriptions.assembly import assemble
from services.subscriptions.clients import RouterClient, TokensClient
from services.subscriptions.config import (
    FACEBOOK_FIELDS,
    INSTAGRAM_FIELDS,
    SubscriptionsSettings,
)
from services.subscriptions.notices import Notices
from services.subscriptions.reconcile import Reconciler, ReconcileSettings
from services.subscriptions.store import PageConnection
from services.tokens import server as tok_server
from services.tokens.vault import Cipher, KeyRing, TokenVault, generate_keyring
from tests.support.waiting import connected, free_port

FB = events_pb2.FACEBOOK
IG = events_pb2.INSTAGRAM
PAGE = "109384756201938"
OTHER_PAGE = "117465829304716"
IG_ACCOUNT = "17841405822304914"
TOKEN = "EAAGpageTOKENsecretVALUE0123456789abcdefXYZ"
NEW_TOKEN = "EAAGnewPAGEtokenVALUE9876543210zyxwvuABCDE"
OTHER_TOKEN = "EAAGotherPAGEtokenVALUEqwertyuiopasdfghjkl"
ROUTER_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """Records RouteParked, GetPageActivity and PurgePage calls; can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        # Every notice: page, account ('' disconnected), version.
        self.notices: list[tuple[str, str, int]] = []
        self.purges: list[tuple[int, str]] = []
        self.activity: dict[str, int] = {}
        self.routed = 3
        self.fail = False

    async def RouteParked(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append((request.platform, request.page_id))
        self.notices.append((request.page_id, request.account_id, request.version))
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "redis down")
        return router_pb2.RouteParkedResponse(routed=self.routed)

    async def PageDisconnected(self, request, context):  # type: ignore[no-untyped-def]
        self.notices.append((request.page_id, "", request.version))
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "redis down")
        return router_pb2.PageDisconnectedResponse(applied=True)

    async def GetPageActivity(self, request, context):  # type: ignore[no-untyped-def]
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "redis down")
        return router_pb2.GetPageActivityResponse(**self.activity)

    async def PurgePage(self, request, context):  # type: ignore[no-untyped-def]
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "redis down")
        self.purges.append((request.platform, request.page_id))
        return router_pb2.PurgePageResponse(conversations=2, messages=5, parked=1)


class VirtualClock(Clock):
    """Time that passes only when someone sleeps: backoff is measured, never waited."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Stack:
    subs: subscriptions_pb2_grpc.SubscriptionsServiceStub
    tokens: tokens_pb2_grpc.TokensServiceStub
    graph: fakegraph.FakeGraph
    router: FakeRouter
    engine: AsyncEngine
    http: GraphClient
    reconciler: Reconciler
    ig_graph: fakegraph.FakeGraph | None = None
    extras: dict[str, object] = field(default_factory=dict)


async def _grpc(stack: AsyncExitStack, service: GrpcService) -> grpc.aio.Channel:
    stack.push_async_callback(service.stop, 0)
    channel = open_channel(f"127.0.0.1:{service.port}")
    stack.push_async_callback(channel.close)
    return await connected(channel)


@asynccontextmanager
async def build_stack(
    database_url: str,
    *,
    tokens_down: bool = False,
    graph_url: str | None = None,
    separate_instagram: bool = False,
    graph_timeout_s: float = 5.0,
    clock: VirtualClock | None = None,
    app_id: str = fakegraph.FAKE_APP_ID,
    reconcile: ReconcileSettings | None = None,
    **graph_settings: object,
) -> AsyncIterator[Stack]:
    """Tokens (real), router (fake), Graph (fake) and subscriptions, all on free ports."""
    async with AsyncExitStack() as stack:
        graph = await fakegraph.start()
        stack.push_async_callback(graph.stop)
        ig_graph = None
        if separate_instagram:
            ig_graph = await fakegraph.start()
            stack.push_async_callback(ig_graph.stop)

        tokens_engine = create_engine(database_url, "tokens")
        stack.push_async_callback(tokens_engine.dispose)
        vault = TokenVault(sessions(tokens_engine), Cipher(KeyRing.from_json(generate_keyring())))
        tokens_servicer = tok_server.TokensServiceServicer(vault)
        tokens_service = await start_server(
            names=[tok_server.SERVICE_NAME],
            register=tok_server.register(tokens_servicer),
            access=tokens_servicer.policy(),
            port=0,
        )
        tokens_channel = await _grpc(stack, tokens_service)
        if tokens_down:
            tokens_target_channel = open_channel(f"127.0.0.1:{free_port()}")
            stack.push_async_callback(tokens_target_channel.close)
        else:
            tokens_target_channel = tokens_channel

        router = FakeRouter()

        def add_router(server: grpc.aio.Server) -> None:
            router_pb2_grpc.add_RouterServiceServicer_to_server(router, server)

        router_channel = await _grpc(
            stack,
            await start_server(
                names=[ROUTER_NAME],
                register=add_router,
                access=Policy.open([ROUTER_NAME]),
                port=0,
            ),
        )

        # Real sleeps in these tests stay short; backoff itself is measured with a VirtualClock.
        graph_settings.setdefault("retry_base_s", 0.01)
        if clock is not None:
            for fake in (graph, ig_graph):
                if fake is not None:
                    fake.state.clock = clock.time
        http = GraphClient(
            GraphSettings(
                url=graph_url or graph.url,
                instagram_url=ig_graph.url if ig_graph else graph_url or graph.url,
                version="v25.0",
                timeout_s=graph_timeout_s,
                app_id=app_id,
                instagram_app_id=app_id,
                **graph_settings,  # type: ignore[arg-type]
            ),
            clock=clock,
        )
        stack.push_async_callback(http.aclose)
        engine = create_engine(database_url, "subscriptions")
        stack.push_async_callback(engine.dispose)
        settings = SubscriptionsSettings(
            database_url=database_url, reconcile=reconcile or ReconcileSettings()
        )
        vault = TokensClient(tokens_target_channel, 2.0)
        router_client = RouterClient(router_channel, 2.0)
        # The production wiring; its loops (history import, gap repair) are not started
        # here, so an import asked for stays PENDING.
        parts = assemble(
            sessions(engine),
            settings,
            vault=vault,
            graph=http,
            router=router_client,
            app_ids={"FACEBOOK": app_id, "INSTAGRAM": app_id},
            clock_ms=(lambda: int(clock.now * 1000)) if clock is not None else now_ms,
        )
        reconciler = parts.reconciler
        subs_service = await start_server(
            names=[sub_server.SERVICE_NAME],
            register=sub_server.register(parts.servicer),
            access=Policy.build([SUBSCRIPTIONS_ACCESS], allow_unauthenticated=True),
            port=0,
        )
        subs_channel = await _grpc(stack, subs_service)
        yield Stack(
            subs=subscriptions_pb2_grpc.SubscriptionsServiceStub(subs_channel),
            tokens=tokens_pb2_grpc.TokensServiceStub(tokens_channel),
            graph=graph,
            router=router,
            engine=engine,
            http=http,
            reconciler=reconciler,
            ig_graph=ig_graph,
            extras={"sessions": sessions(engine), "router_client": router_client},
        )


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Stack]:
    async with build_stack(database_url) as stack:
        yield stack


def connect_request(
    page_id: str = PAGE,
    account: str = "acme",
    token: str = TOKEN,
    platform: int = FB,
    **kwargs: object,
) -> subscriptions_pb2.ConnectPageRequest:
    return subscriptions_pb2.ConnectPageRequest(
        platform=platform, page_id=page_id, account_id=account, page_token=token, **kwargs
    )


def token_ref(page_id: str = PAGE, platform: int = FB) -> tokens_pb2.PageRef:
    return tokens_pb2.PageRef(platform=platform, page_id=page_id)


async def rpc_error(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def connection_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(PageConnection))).scalar_one()


async def get_page(env: Stack, page_id: str = PAGE, platform: int = FB) -> subscriptions_pb2.Page:
    response = await env.subs.GetPage(
        subscriptions_pb2.GetPageRequest(platform=platform, page_id=page_id)
    )
    return response.page


# --- connect ---------------------------------------------------------------------------------


async def test_connect_subscribes_with_bearer_header_and_routes_parked(env: Stack) -> None:
    response = await env.subs.ConnectPage(connect_request())

    posts = env.graph.state.requests_to("POST", "subscribed_apps")
    assert len(posts) == 1
    post = posts[0]
    assert post["path"] == f"/v25.0/{PAGE}/subscribed_apps"
    assert post["has_authorization"] and post["bearer_token"] == TOKEN
    assert post["form"] == {"subscribed_fields": ",".join(FACEBOOK_FIELDS)}
    assert post["query"] == {} and post["raw_query"] == ""
    assert TOKEN not in post["path"] and TOKEN not in json.dumps(post["form"])

    page = response.page
    assert page.status == subscriptions_pb2.SUBSCRIBED
    assert (page.platform, page.page_id, page.account_id) == (FB, PAGE, "acme")
    assert list(page.subscribed_fields) == list(FACEBOOK_FIELDS)
    assert (page.last_error, page.last_error_code, page.last_error_subcode) == ("", 0, 0)
    assert response.parked_routed == 3
    assert env.router.calls == [(FB, PAGE)]

    decrypted = await env.tokens.DecryptToken(tokens_pb2.DecryptTokenRequest(page=token_ref()))
    assert decrypted.token == TOKEN
    assert await get_page(env) == page
    assert TOKEN not in str(page)


async def test_graph_shows_the_subscription(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request(subscribed_fields=["messages", "message_echoes"]))
    assert env.graph.state.pages[PAGE]["subscribed_fields"] == ["messages", "message_echoes"]
    page = await get_page(env)
    assert list(page.subscribed_fields) == ["messages", "message_echoes"]


async def test_instagram_uses_the_instagram_host_and_fields(database_url: str) -> None:
    async with build_stack(database_url, separate_instagram=True) as env:
        assert env.ig_graph is not None
        response = await env.subs.ConnectPage(connect_request(IG_ACCOUNT, platform=IG))
        assert response.page.status == subscriptions_pb2.SUBSCRIBED
        assert env.graph.state.requests == []
        (post,) = env.ig_graph.state.requests_to("POST")
        assert post["path"] == f"/v25.0/{IG_ACCOUNT}/subscribed_apps"
        assert post["bearer_token"] == TOKEN
        assert post["form"] == {"subscribed_fields": ",".join(INSTAGRAM_FIELDS)}
        assert env.router.calls == [(IG, IG_ACCOUNT)]


async def test_connecting_again_is_idempotent_and_replaces_the_token(env: Stack) -> None:
    first = (await env.subs.ConnectPage(connect_request())).page
    second = (await env.subs.ConnectPage(connect_request(token=NEW_TOKEN))).page
    assert await connection_rows(env.engine) == 1
    assert second.created_at_ms == first.created_at_ms
    assert second.status == subscriptions_pb2.SUBSCRIBED
    decrypted = await env.tokens.DecryptToken(tokens_pb2.DecryptTokenRequest(page=token_ref()))
    assert decrypted.token == NEW_TOKEN
    posts = env.graph.state.requests_to("POST")
    assert [post["bearer_token"] for post in posts] == [TOKEN, NEW_TOKEN]
    assert env.router.calls == [(FB, PAGE), (FB, PAGE)]


async def test_graph_error_is_subscribe_failed_and_resubscribe_repairs_it(env: Stack) -> None:
    env.graph.state.fail(method="POST", path_contains="subscribed_apps", preset="10_2018278")
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == subscriptions_pb2.SUBSCRIBE_FAILED
    assert (page.last_error_code, page.last_error_subcode) == (10, 2018278)
    assert "outside of allowed window" in page.last_error
    assert env.router.calls == [(FB, PAGE)]  # the page is connected, so parked events route
    token_status = await env.tokens.GetTokenStatus(
        tokens_pb2.GetTokenStatusRequest(page=token_ref())
    )
    assert token_status.status == tokens_pb2.ACTIVE

    repaired = (
        await env.subs.Resubscribe(subscriptions_pb2.ResubscribeRequest(platform=FB, page_id=PAGE))
    ).page
    assert repaired.status == subscriptions_pb2.SUBSCRIBED
    assert (repaired.last_error, repaired.last_error_code, repaired.last_error_subcode) == (
        "",
        0,
        0,
    )
    posts = env.graph.state.requests_to("POST")
    assert len(posts) == 2 and posts[1]["bearer_token"] == TOKEN
    assert posts[1]["form"] == posts[0]["form"]
    assert PAGE in env.graph.state.pages


async def test_success_as_a_boolean_is_success(env: Stack) -> None:
    # Instagram Login answers a boolean where Messenger answers the string "true".
    env.graph.state.fail(method="POST", body={"success": True})
    await PagesApi(env.http).subscribe("INSTAGRAM", IG_ACCOUNT, Secret(TOKEN), ["messages"])


async def test_a_post_that_graph_does_not_show_is_subscribe_failed(env: Stack) -> None:
    # Graph said success but GET subscribed_apps lists nothing: not confirmed, not SUBSCRIBED.
    env.graph.state.fail(method="POST", body={"success": True})
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == subscriptions_pb2.SUBSCRIBE_FAILED
    assert "GET subscribed_apps shows app not subscribed" in page.last_error
    assert len(env.graph.state.requests_to("GET", "subscribed_apps")) == 1


@pytest.mark.parametrize("body", [{"success": False}, {"success": "false"}, {}, ["ok"]])
async def test_unconfirmed_success_is_subscribe_failed(env: Stack, body: object) -> None:
    env.graph.state.fail(method="POST", body=body)
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == subscriptions_pb2.SUBSCRIBE_FAILED
    assert page.last_error_code == 0 and "success" in page.last_error


async def test_graph_client_lists_subscribed_apps(env: Stack) -> None:
    client = GraphClient(GraphSettings(url=env.graph.url, instagram_url=env.graph.url))
    api = PagesApi(client)
    try:
        assert await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN)) == []
        await api.subscribe("FACEBOOK", PAGE, Secret(TOKEN), ["messages"])
        (app,) = await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
        assert app.app_id == fakegraph.FAKE_APP_ID and app.fields == ("messages",)
        env.graph.state.fail(method="GET", preset="190_463")
        with pytest.raises(GraphError) as caught:
            await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
        error = caught.value
        assert (error.http_status, error.code, error.subcode) == (400, 190, 463)
        assert error.type == "OAuthException" and error.fbtrace_id == "B1yQm7dLsW0aXcE4tRn2kPo"
        assert error.token_invalid and not error.transient and not error.unavailable
        assert TOKEN not in repr(error) and TOKEN not in str(error)
    finally:
        await client.aclose()


async def test_server_error_without_graph_body(env: Stack) -> None:
    env.graph.state.fail(preset="500", times=None)  # every retry gets it too
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == subscriptions_pb2.SUBSCRIBE_FAILED
    assert page.last_error_code == 0
    assert "500" in page.last_error


@pytest.mark.parametrize(
    ("failure", "status", "code", "subcode"),
    [
        ({"preset": "190_460"}, subscriptions_pb2.REAUTH_REQUIRED, 190, 460),
        ({"preset": "190_463"}, subscriptions_pb2.REAUTH_REQUIRED, 190, 463),
        (
            {"error": {"message": "API session", "type": "OAuthException", "code": 102}},
            subscriptions_pb2.REAUTH_REQUIRED,
            102,
            0,
        ),
        (
            {"error": {"message": "API session", "code": 102, "error_subcode": 33}},
            subscriptions_pb2.SUBSCRIBE_FAILED,
            102,
            33,
        ),
        ({"preset": "613", "times": None}, subscriptions_pb2.SUBSCRIBE_FAILED, 613, 0),
    ],
)
async def test_token_errors_need_reauthorization(
    env: Stack, failure: dict[str, object], status: int, code: int, subcode: int
) -> None:
    env.graph.state.fail(method="POST", **failure)
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == status
    assert (page.last_error_code, page.last_error_subcode) == (code, subcode)
    token_status = await env.tokens.GetTokenStatus(
        tokens_pb2.GetTokenStatusRequest(page=token_ref())
    )
    if status == subscriptions_pb2.REAUTH_REQUIRED:
        assert token_status.status == tokens_pb2.REAUTH_REQUIRED
        assert (token_status.graph_code, token_status.graph_subcode) == (code, subcode)
        assert token_status.reason
    else:
        assert token_status.status == tokens_pb2.ACTIVE


async def test_reconnecting_after_reauth_makes_everything_active(env: Stack) -> None:
    env.graph.state.fail(preset="190_460")
    await env.subs.ConnectPage(connect_request())
    page = (await env.subs.ConnectPage(connect_request(token=NEW_TOKEN))).page
    assert page.status == subscriptions_pb2.SUBSCRIBED
    token_status = await env.tokens.GetTokenStatus(
        tokens_pb2.GetTokenStatusRequest(page=token_ref())
    )
    assert token_status.status == tokens_pb2.ACTIVE


async def test_resubscribe_that_succeeds_clears_the_vault_flag(env: Stack) -> None:
    env.graph.state.fail(preset="190_460")
    await env.subs.ConnectPage(connect_request())
    page = (
        await env.subs.Resubscribe(subscriptions_pb2.ResubscribeRequest(platform=FB, page_id=PAGE))
    ).page
    assert page.status == subscriptions_pb2.SUBSCRIBED
    token_status = await env.tokens.GetTokenStatus(
        tokens_pb2.GetTokenStatusRequest(page=token_ref())
    )
    assert token_status.status == tokens_pb2.ACTIVE


# --- accounts --------------------------------------------------------------------------------


async def test_other_account_without_move_changes_nothing(env: Stack) -> None:
    before = (await env.subs.ConnectPage(connect_request(account="acme"))).page
    error = await rpc_error(
        env.subs.ConnectPage(connect_request(account="globex", token=NEW_TOKEN))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "acme" in error.details() and "globex" in error.details()
    assert NEW_TOKEN not in error.details()

    assert await get_page(env) == before
    decrypted = await env.tokens.DecryptToken(tokens_pb2.DecryptTokenRequest(page=token_ref()))
    assert decrypted.token == TOKEN
    assert len(env.graph.state.requests_to("POST")) == 1
    assert env.router.calls == [(FB, PAGE)]


async def test_move_to_other_account(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request(account="acme"))
    moved = (
        await env.subs.ConnectPage(connect_request(account="globex", token=NEW_TOKEN, move=True))
    ).page
    assert moved.account_id == "globex"
    assert moved.status == subscriptions_pb2.SUBSCRIBED
    listed = await env.subs.ListPages(subscriptions_pb2.ListPagesRequest(account_id="acme"))
    assert list(listed.pages) == []
    decrypted = await env.tokens.DecryptToken(tokens_pb2.DecryptTokenRequest(page=token_ref()))
    assert decrypted.token == NEW_TOKEN


async def test_list_pages_by_account_in_order(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request(OTHER_PAGE, account="globex", token=OTHER_TOKEN))
    await env.subs.ConnectPage(connect_request(PAGE, account="acme"))
    await env.subs.ConnectPage(connect_request(IG_ACCOUNT, account="acme", platform=IG))
    await env.subs.ConnectPage(connect_request(OTHER_PAGE, account="globex", platform=IG))
    everything = await env.subs.ListPages(subscriptions_pb2.ListPagesRequest())
    assert [(p.account_id, p.platform, p.page_id) for p in everything.pages] == [
        ("acme", FB, PAGE),
        ("acme", IG, IG_ACCOUNT),
        ("globex", FB, OTHER_PAGE),
        ("globex", IG, OTHER_PAGE),
    ]
    acme = await env.subs.ListPages(subscriptions_pb2.ListPagesRequest(account_id="acme"))
    assert [p.page_id for p in acme.pages] == [PAGE, IG_ACCOUNT]
    error = await rpc_error(env.subs.ListPages(subscriptions_pb2.ListPagesRequest(account_id="-")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("account_id:")


# --- disconnect ------------------------------------------------------------------------------


async def test_disconnect_unsubscribes_once_with_that_pages_token(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request(PAGE, token=TOKEN))
    await env.subs.ConnectPage(connect_request(OTHER_PAGE, token=OTHER_TOKEN))
    response = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)
    )
    assert response.unsubscribed and response.graph_error == ""

    deletes = env.graph.state.requests_to("DELETE")
    assert len(deletes) == 1
    assert deletes[0]["path"] == f"/v25.0/{PAGE}/subscribed_apps"
    assert deletes[0]["bearer_token"] == TOKEN
    assert deletes[0]["query"] == {}
    assert PAGE not in env.graph.state.pages and OTHER_PAGE in env.graph.state.pages

    error = await rpc_error(
        env.tokens.DecryptToken(tokens_pb2.DecryptTokenRequest(page=token_ref()))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(
        env.subs.GetPage(subscriptions_pb2.GetPageRequest(platform=FB, page_id=PAGE))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # The other page is untouched.
    other = await env.tokens.DecryptToken(
        tokens_pb2.DecryptTokenRequest(page=token_ref(OTHER_PAGE))
    )
    assert other.token == OTHER_TOKEN
    assert (await get_page(env, OTHER_PAGE)).status == subscriptions_pb2.SUBSCRIBED


async def test_disconnect_when_graph_fails_still_disconnects(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    env.graph.state.fail(method="DELETE", preset="2", times=None)
    response = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)
    )
    assert not response.unsubscribed
    assert "unexpected error" in response.graph_error
    assert await connection_rows(env.engine) == 0
    error = await rpc_error(
        env.tokens.DecryptToken(tokens_pb2.DecryptTokenRequest(page=token_ref()))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_disconnect_without_a_token_still_disconnects(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    await env.tokens.DeleteToken(tokens_pb2.DeleteTokenRequest(page=token_ref()))
    response = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)
    )
    assert not response.unsubscribed and "no token" in response.graph_error
    assert env.graph.state.requests_to("DELETE") == []
    assert await connection_rows(env.engine) == 0


async def test_unknown_page_is_not_found(env: Stack) -> None:
    for call in (
        env.subs.GetPage(subscriptions_pb2.GetPageRequest(platform=FB, page_id=PAGE)),
        env.subs.DisconnectPage(subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)),
        env.subs.Resubscribe(subscriptions_pb2.ResubscribeRequest(platform=FB, page_id=PAGE)),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert PAGE in error.details()
    assert env.graph.state.requests == []


# --- validation ------------------------------------------------------------------------------

BAD_CONNECTS = [
    (connect_request(platform=0), "platform"),
    (connect_request(platform=9), "platform"),
    (connect_request(page_id=""), "page_id"),
    (connect_request(page_id="12a"), "page_id"),
    (connect_request(page_id="../me"), "page_id"),
    (connect_request(account=""), "account_id"),
    (connect_request(account="acme corp"), "account_id"),
    (connect_request(account="_acme"), "account_id"),
    (connect_request(account="a" * 65), "account_id"),
    (connect_request(token=""), "page_token"),
    (connect_request(token=TOKEN + " " + TOKEN), "page_token"),
    (connect_request(token="x" * 4097), "page_token"),
    (connect_request(subscribed_fields=["messages", "Messages!"]), "subscribed_fields[1]"),
    (connect_request(subscribed_fields=["messages&access_token=x"]), "subscribed_fields[0]"),
]


@pytest.mark.parametrize(("request_", "field"), BAD_CONNECTS)
async def test_bad_connect_is_invalid_argument_and_changes_nothing(
    env: Stack, request_: subscriptions_pb2.ConnectPageRequest, field: str
) -> None:
    error = await rpc_error(env.subs.ConnectPage(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")
    assert TOKEN not in error.details()
    assert await connection_rows(env.engine) == 0
    assert env.graph.state.requests == []
    assert env.router.calls == []
    token_error = await rpc_error(
        env.tokens.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=token_ref()))
    )
    assert token_error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("platform", "page_id", "field"), [(0, PAGE, "platform"), (FB, "", "page_id")]
)
async def test_bad_page_on_other_rpcs(env: Stack, platform: int, page_id: str, field: str) -> None:
    for call in (
        env.subs.GetPage(subscriptions_pb2.GetPageRequest(platform=platform, page_id=page_id)),
        env.subs.DisconnectPage(
            subscriptions_pb2.DisconnectPageRequest(platform=platform, page_id=page_id)
        ),
        env.subs.Resubscribe(
            subscriptions_pb2.ResubscribeRequest(platform=platform, page_id=page_id)
        ),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(f"{field}:")


# --- dependencies down -----------------------------------------------------------------------


async def test_tokens_down_is_unavailable_and_stores_nothing(database_url: str) -> None:
    async with build_stack(database_url, tokens_down=True) as env:
        error = await rpc_error(env.subs.ConnectPage(connect_request()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "tokens" in error.details()
        assert TOKEN not in error.details()
        assert await connection_rows(env.engine) == 0
        assert env.graph.state.requests == []
        assert env.router.calls == []


async def test_graph_unreachable_is_unavailable_and_leaves_subscribe_failed(
    database_url: str,
) -> None:
    async with build_stack(database_url, graph_url=f"http://127.0.0.1:{free_port()}") as env:
        error = await rpc_error(env.subs.ConnectPage(connect_request()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "Graph" in error.details() and TOKEN not in error.details()
        page = await get_page(env)
        assert page.status == subscriptions_pb2.SUBSCRIBE_FAILED
        assert "unreachable" in page.last_error
        assert env.router.calls == [(FB, PAGE)]


async def test_graph_timeout_is_unavailable(database_url: str) -> None:
    async with build_stack(database_url, graph_timeout_s=0.3) as env:
        # Longer than the client waits, on every attempt.
        env.graph.state.fail(method="POST", delay_s=30, times=None)
        error = await rpc_error(env.subs.ConnectPage(connect_request()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "timed out" in error.details()
        assert (await get_page(env)).status == subscriptions_pb2.SUBSCRIBE_FAILED


async def test_router_failure_still_connects_and_reconnect_retries(
    env: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    env.router.fail = True
    response = await env.subs.ConnectPage(connect_request())
    assert response.page.status == subscriptions_pb2.SUBSCRIBED
    assert response.parked_routed == 0
    assert any("parked" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    env.router.fail = False
    again = await env.subs.ConnectPage(connect_request())
    assert again.parked_routed == 3
    assert env.router.calls == [(FB, PAGE), (FB, PAGE)]


DISCONNECT = subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)


def later_notices(env: Stack, by_ms: int) -> Notices:
    """The notice sender as it will be `by_ms` from now, when every retry is due."""
    return Notices(
        env.extras["sessions"],  # type: ignore[arg-type]
        env.extras["router_client"],  # type: ignore[arg-type]
        clock=lambda: now_ms() + by_ms,
    )


async def undelivered(env: Stack) -> int:
    async with sessions(env.engine)() as session:
        return await sub_store.undelivered_notices(session)


async def test_a_notice_the_router_missed_is_sent_again_until_taken(env: Stack) -> None:
    """RouteParked failed: the connect is stored, the notice is kept, and sent again later
    (not only when someone connects again), with the same version."""
    env.router.fail = True
    await env.subs.ConnectPage(connect_request())
    assert env.router.notices == [(PAGE, "acme", 1)]
    assert await undelivered(env) == 1
    # Not due before its delay: nothing is sent.
    assert await later_notices(env, 0).deliver_due() == 0
    assert len(env.router.notices) == 1
    # Still failing when due: counted, and the next attempt waits longer.
    assert await later_notices(env, 1_500).deliver_due() == 0
    assert len(env.router.notices) == 2
    assert await later_notices(env, 2_500).deliver_due() == 0  # the second delay is 2 s
    assert len(env.router.notices) == 2
    env.router.fail = False
    assert await later_notices(env, 10_000).deliver_due() == 1
    assert env.router.notices[-1] == (PAGE, "acme", 1)
    assert await undelivered(env) == 0
    assert await later_notices(env, 600_000).deliver_due() == 0


async def test_disconnect_tells_the_router_and_every_change_has_a_newer_version(
    env: Stack,
) -> None:
    await env.subs.ConnectPage(connect_request())
    await env.subs.ConnectPage(connect_request(account="globex", move=True))
    await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)
    )
    await env.subs.ConnectPage(connect_request())
    assert env.router.notices == [
        (PAGE, "acme", 1),
        (PAGE, "globex", 2),
        (PAGE, "", 3),
        (PAGE, "acme", 4),
    ]
    assert await undelivered(env) == 0


async def test_a_disconnect_the_router_missed_is_sent_again(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    env.router.fail = True
    await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)
    )
    assert env.router.notices[-1] == (PAGE, "", 2)
    assert await undelivered(env) == 1
    env.router.fail = False
    assert await later_notices(env, 10_000).deliver_due() == 1
    assert env.router.notices[-1] == (PAGE, "", 2)
    assert await undelivered(env) == 0


# --- secrecy ---------------------------------------------------------------------------------


async def test_token_never_in_logs_urls_or_error_details(
    env: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    details = []
    await env.subs.ConnectPage(connect_request())
    env.graph.state.fail(preset="190_460")
    await env.subs.ConnectPage(connect_request())
    env.graph.state.fail(preset="500", times=None)
    await env.subs.Resubscribe(subscriptions_pb2.ResubscribeRequest(platform=FB, page_id=PAGE))
    details.append(
        (
            await rpc_error(env.subs.ConnectPage(connect_request(account="globex", move=False)))
        ).details()
    )
    details.append(
        (await rpc_error(env.subs.ConnectPage(connect_request(token=TOKEN + " x")))).details()
    )
    env.graph.state.fail(method="DELETE", preset="100")
    disconnected = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE)
    )
    details.append(disconnected.graph_error)

    assert all(TOKEN not in text for text in details)
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in repr(vars(record))
    for request in env.graph.state.requests:
        assert TOKEN not in request["path"] and TOKEN not in request["raw_query"]
        assert "access_token" not in (request["form"] or {})


# --- settings and the embedded default -------------------------------------------------------


def test_settings_defaults() -> None:
    settings = SubscriptionsSettings.from_env({})
    assert settings.graph.url == "https://graph.facebook.com"
    assert settings.graph.instagram_url == "https://graph.instagram.com"
    assert settings.graph.version == "v25.0"
    assert settings.graph.timeout_s == 10
    assert (settings.graph.max_attempts, settings.graph.retry_max_wait_s) == (3, 20)
    assert settings.graph.app_id == "" and not settings.graph.appsecret_proof
    assert settings.reconcile.interval_s == 600 and settings.reconcile.concurrency == 4
    assert (settings.tokens_target, settings.router_target) == (
        "127.0.0.1:50052",
        "127.0.0.1:50051",
    )
    assert (settings.host, settings.port) == ("127.0.0.1", 50053)
    assert settings.default_fields == {"FACEBOOK": FACEBOOK_FIELDS, "INSTAGRAM": INSTAGRAM_FIELDS}
    assert settings.database_url.endswith("subscriptions.db")


def test_settings_overrides() -> None:
    settings = SubscriptionsSettings.from_env(
        {
            "PAGEWIRE_GRAPH_URL": "http://127.0.0.1:9000/",
            "PAGEWIRE_INSTAGRAM_GRAPH_URL": "http://127.0.0.1:9001",
            "PAGEWIRE_GRAPH_VERSION": "v24.0",
            "PAGEWIRE_FACEBOOK_FIELDS": "messages, standby,messages",
            "PAGEWIRE_INSTAGRAM_FIELDS": "messages",
            "PAGEWIRE_TOKENS_ADDR": "dns:///tokens:50052",
            "PAGEWIRE_SUBSCRIPTIONS_PORT": "6000",
            "PAGEWIRE_DATABASE_URL": "postgresql://u:pw@db/pagewire",
        }
    )
    assert settings.graph.url == "http://127.0.0.1:9000"
    assert settings.graph.version == "v24.0"
    assert settings.facebook_fields == ("messages", "standby")
    assert settings.instagram_fields == ("messages",)
    assert settings.tokens_target == "dns:///tokens:50052"
    assert settings.port == 6000
    assert "pw" not in repr(settings)


def test_appsecret_proof_needs_the_app_secret() -> None:
    with pytest.raises(SettingsError, match="PAGEWIRE_APP_SECRET"):
        SubscriptionsSettings.from_env({"PAGEWIRE_GRAPH_APPSECRET_PROOF": "1"})
    secret = "0123456789abcdef0123456789abcdef"
    settings = SubscriptionsSettings.from_env(
        {
            "PAGEWIRE_GRAPH_APPSECRET_PROOF": "1",
            "PAGEWIRE_APP_SECRET": secret,
            "PAGEWIRE_APP_ID": "842019375510284",
            "PAGEWIRE_RECONCILE_INTERVAL_S": "30",
        }
    )
    assert settings.graph.appsecret_proof
    assert settings.app_ids == {"FACEBOOK": "842019375510284", "INSTAGRAM": "842019375510284"}
    assert settings.reconcile.interval_s == 30
    assert secret not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PAGEWIRE_GRAPH_VERSION", "25"),
        ("PAGEWIRE_GRAPH_URL", "graph.facebook.com"),
        ("PAGEWIRE_FACEBOOK_FIELDS", "messages,Bad Field"),
        ("PAGEWIRE_GRAPH_TIMEOUT_S", "soon"),
        ("PAGEWIRE_APP_ID", "pagewire"),
        ("PAGEWIRE_GRAPH_MAX_ATTEMPTS", "0"),
        ("PAGEWIRE_RECONCILE_CONCURRENCY", "0"),
        ("PAGEWIRE_RECONCILE_JITTER", "1.5"),
        ("PAGEWIRE_IG_TOKEN_REAUTH_DAYS", "30"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        SubscriptionsSettings.from_env({variable: value})


async def test_store_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'subscriptions.db'}"
    migrate.upgrade("subscriptions", url)
    engine = create_engine(url, "subscriptions")
    try:
        make = sessions(engine)
        ok = sub_store.Outcome(sub_store.SUBSCRIBED)
        common = {"platform": "FACEBOOK", "page_id": PAGE, "fields": ["messages"], "outcome": ok}
        async with make() as session, session.begin():
            owner = await sub_store.save_connection(
                session, account_id="acme", allow_move=False, now=1, **common
            )
            assert owner == "acme"
        async with make() as session, session.begin():
            owner = await sub_store.save_connection(
                session, account_id="globex", allow_move=False, now=2, **common
            )
            assert owner is None
        async with make() as session, session.begin():
            owner = await sub_store.save_connection(
                session, account_id="globex", allow_move=True, now=3, **common
            )
            assert owner == "globex"
        async with make() as session:
            page = await sub_store.get(session, "FACEBOOK", PAGE)
            assert page is not None
            assert (page.account_id, page.created_at_ms, page.updated_at_ms) == ("globex", 1, 3)
    finally:
        await engine.dispose()


def test_secret_wrapping_of_tokens() -> None:
    # The domain passes tokens around as Secret; a stray log of one shows stars.
    assert TOKEN not in repr(Secret(TOKEN))
