"""Least privilege between the services, through real processes over mutual TLS.

Every RPC of every service is called with every identity: exactly the cells of the
expected table answer; every other is PERMISSION_DENIED naming the method (never the
allowed identities), counted and audited with the caller. A certificate of another
CA, or none, does not get past the TLS handshake. Readers and senders reach only
their accounts, and a send records who asked, in the router and in the vault's audit.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from pagewire import fakegraph
from pagewire.kit.tls import DevPki, generate_pki
from pagewire.proto import (
    events_pb2,
    router_pb2,
    router_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from services.tokens.vault import generate_keyring
from tests.e2e.conftest import PAGE_TOKENS, cli, connect, sign
from tests.support.stack import Stack
from tests.support.waiting import free_port, wait_for

ACME_PAGE, GLOBEX_PAGE = "109384756201938", "117465829304716"
USER = "7294015836620194"
FB = events_pb2.FACEBOOK
UNKNOWN_PAGE = "1"

ROUTER = "pagewire.router.v1.RouterService"
SUBSCRIPTIONS = "pagewire.subscriptions.v1.SubscriptionsService"
TOKENS = "pagewire.tokens.v1.TokensService"
STUBS = {
    ROUTER: ("router", router_pb2_grpc.RouterServiceStub),
    SUBSCRIPTIONS: ("subscriptions", subscriptions_pb2_grpc.SubscriptionsServiceStub),
    TOKENS: ("tokens", tokens_pb2_grpc.TokensServiceStub),
}
IDENTITIES = ("gateway", "router", "subscriptions", "tokens", "cli", "app")
READERS = {"cli", "app"}

# Who may call what: written out here, independently of the services' own tables, so a
# table that drifts from the design fails this test, and so does an RPC added to a proto
# without a row below.
EXPECTED: dict[str, dict[str, set[str]]] = {
    ROUTER: {
        "Ingest": {"gateway", "subscriptions"},
        "RouteParked": {"subscriptions"},
        "PageDisconnected": {"subscriptions"},
        "GetPageActivity": {"subscriptions"},
        "PurgePage": {"subscriptions"},
        "ListConversations": READERS,
        "ListMessages": READERS,
        "ListEvents": READERS,
        "StreamEvents": READERS,
        "SendMessage": READERS,
        "SendAction": READERS,
        "ListComments": READERS,
        "ReplyToComment": READERS,
        "ModerateComment": READERS,
        "GetLogStatus": {"cli"},
        "ReprocessEvents": {"cli"},
    },
    SUBSCRIPTIONS: {
        "GetPage": {"router", *READERS},
        "ListPages": READERS,
        "ConnectPage": {"cli"},
        "DisconnectPage": {"cli"},
        "Resubscribe": {"cli"},
        "ImportPages": {"cli"},
        "Reconcile": {"cli"},
        "ImportHistory": {"cli"},
        "RepairGaps": {"cli"},
    },
    TOKENS: {
        "DecryptToken": {"router", "subscriptions"},
        "PutToken": {"router", "subscriptions"},
        "DeleteToken": {"router", "subscriptions"},
        "MarkTokenInvalid": {"router", "subscriptions"},
        "GetTokenStatus": {"router", "subscriptions", "cli"},
        "RotateKeys": {"cli"},
        "ListKeys": {"cli"},
        "RemoveKey": {"cli"},
        "ListAudit": {"cli"},
    },
}

# A request per method that an allowed caller limited to `acme` gets answered (often
# INVALID_ARGUMENT or NOT_FOUND) and that changes nothing.
REQUESTS: dict[str, dict[str, Callable[[], Message]]] = {
    ROUTER: {
        "Ingest": lambda: router_pb2.IngestRequest(),
        "RouteParked": lambda: router_pb2.RouteParkedRequest(platform=FB, page_id=UNKNOWN_PAGE),
        # A negative version is refused before anything is recorded.
        "PageDisconnected": lambda: router_pb2.PageDisconnectedRequest(
            platform=FB, page_id=UNKNOWN_PAGE, version=-1
        ),
        "GetPageActivity": lambda: router_pb2.GetPageActivityRequest(platform=FB, page_id="1"),
        "PurgePage": lambda: router_pb2.PurgePageRequest(),
        "ListConversations": lambda: router_pb2.ListConversationsRequest(account_id="acme"),
        "ListMessages": lambda: router_pb2.ListMessagesRequest(page_id=ACME_PAGE),
        "ListEvents": lambda: router_pb2.ListEventsRequest(page_id=ACME_PAGE),
        # after_cursor -1 is refused after the identity check: the stream never opens.
        "StreamEvents": lambda: router_pb2.StreamEventsRequest(account_id="acme", after_cursor=-1),
        "SendMessage": lambda: router_pb2.SendMessageRequest(page_id=ACME_PAGE, text="x"),
        "SendAction": lambda: router_pb2.SendActionRequest(action="dance"),
        "ListComments": lambda: router_pb2.ListCommentsRequest(page_id=ACME_PAGE),
        "ReplyToComment": lambda: router_pb2.ReplyToCommentRequest(),
        "ModerateComment": lambda: router_pb2.ModerateCommentRequest(),
        "GetLogStatus": lambda: router_pb2.GetLogStatusRequest(),
        "ReprocessEvents": lambda: router_pb2.ReprocessEventsRequest(since_ms=-1),
    },
    SUBSCRIPTIONS: {
        "GetPage": lambda: subscriptions_pb2.GetPageRequest(platform=FB, page_id=ACME_PAGE),
        "ListPages": lambda: subscriptions_pb2.ListPagesRequest(account_id="acme"),
        "ConnectPage": lambda: subscriptions_pb2.ConnectPageRequest(),
        "DisconnectPage": lambda: subscriptions_pb2.DisconnectPageRequest(),
        "Resubscribe": lambda: subscriptions_pb2.ResubscribeRequest(),
        "ImportPages": lambda: subscriptions_pb2.ImportPagesRequest(),
        "Reconcile": lambda: subscriptions_pb2.ReconcileRequest(platform=FB, page_id="1"),
        # No page named: refused before anything is asked of Graph.
        "ImportHistory": lambda: subscriptions_pb2.ImportHistoryRequest(),
        "RepairGaps": lambda: subscriptions_pb2.RepairGapsRequest(platform=FB),
    },
    TOKENS: {
        "DecryptToken": lambda: tokens_pb2.DecryptTokenRequest(
            page=tokens_pb2.PageRef(platform=FB, page_id=UNKNOWN_PAGE)
        ),
        "PutToken": lambda: tokens_pb2.PutTokenRequest(),
        "DeleteToken": lambda: tokens_pb2.DeleteTokenRequest(),
        "MarkTokenInvalid": lambda: tokens_pb2.MarkTokenInvalidRequest(),
        "GetTokenStatus": lambda: tokens_pb2.GetTokenStatusRequest(
            page=tokens_pb2.PageRef(platform=FB, page_id=UNKNOWN_PAGE)
        ),
        "RotateKeys": lambda: tokens_pb2.RotateKeysRequest(),
        "ListKeys": lambda: tokens_pb2.ListKeysRequest(),
        "RemoveKey": lambda: tokens_pb2.RemoveKeyRequest(),
        "ListAudit": lambda: tokens_pb2.ListAuditRequest(),
    },
}
# The vault's audit action of each RPC.
TOKEN_ACTIONS = {
    "DecryptToken": "DECRYPT",
    "PutToken": "PUT",
    "DeleteToken": "DELETE",
    "MarkTokenInvalid": "MARK_INVALID",
    "GetTokenStatus": "STATUS",
    "RotateKeys": "ROTATE",
    "ListKeys": "LIST_KEYS",
    "RemoveKey": "REMOVE_KEY",
    "ListAudit": "LIST_AUDIT",
}


def _methods(service: str) -> list[str]:
    return [m.name for m in descriptor_pool.Default().FindServiceByName(service).methods]


@pytest.fixture
async def secured(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    graph: fakegraph.FakeGraph,
) -> AsyncIterator[Stack]:
    """The suite over mutual TLS with `app` limited to acme and an operator `helpdesk`
    (a certificate of the suite's CA) limited to acme too."""
    stack = Stack.create(
        tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        graph_url=graph.url,
        keyring=generate_keyring(),
        tls=True,
    )
    assert stack.pki is not None
    generate_pki(stack.pki.directory, ("helpdesk",))  # same CA: the files are reused
    stack.env.update(
        {
            "PAGEWIRE_OPERATORS": "cli,helpdesk",
            "PAGEWIRE_ROUTER_ACCOUNT_ACCESS": "app=acme;helpdesk=acme",
            "PAGEWIRE_SUBSCRIPTIONS_ACCOUNT_ACCESS": "app=acme;helpdesk=acme",
            # Every send decrypts, so each one leaves its audit record.
            "PAGEWIRE_TOKEN_CACHE_TTL_S": "0",
        }
    )
    try:
        for service in ("tokens", "subscriptions", "router", "gateway"):
            await stack.start(service)
        await connect(stack, ACME_PAGE, "acme")
        await connect(stack, GLOBEX_PAGE, "globex")
        yield stack
    finally:
        await stack.stop_all()
    logs = stack.logs()
    assert not [p for p, token in PAGE_TOKENS.items() if token in logs]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """Another CA issuing certificates with the very same names."""
    return generate_pki(tmp_path_factory.mktemp("foreign"), IDENTITIES)


async def _call(stack: Stack, service: str, method: str, channel_of) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    name, stub_class = STUBS[service]
    channel = channel_of(name)
    try:
        stub = stub_class(channel)
        request = REQUESTS[service][method]()
        call = getattr(stub, method)(request, timeout=5)
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for _ in call:
                pass
        else:
            await call
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            details = exc.details() or ""
            assert method in details, details
            # The refusal names the method and the caller, never who else may call it.
            who = {i for i in EXPECTED[service][method] if f"'{i}'" in details}
            assert not who, details
        return exc.code()
    finally:
        await channel.close()


def _refusals(stack: Stack) -> list[tuple[str, str, str]]:
    """(service, rpc, caller) of every "call refused" line the gRPC services logged."""
    found = []
    for line in stack.logs().splitlines():
        if '"call refused"' not in line:
            continue
        record = json.loads(line)
        found.append((record["service"], record["rpc"], record["caller"]))
    return found


async def test_every_rpc_by_every_identity(secured: Stack) -> None:
    stack = secured
    assert set(EXPECTED) == set(REQUESTS) == set(STUBS)
    for service in EXPECTED:
        methods = _methods(service)
        # A new RPC without an expected row (or a request here) fails right here.
        assert sorted(EXPECTED[service]) == sorted(methods), service
        assert sorted(REQUESTS[service]) == sorted(methods), service

    outcomes: dict[tuple[str, str, str], grpc.StatusCode] = {}
    for service in EXPECTED:
        for method in _methods(service):
            for identity in IDENTITIES:
                outcomes[(service, method, identity)] = await _call(
                    stack, service, method, lambda name, i=identity: stack.channel(name, identity=i)
                )
    wrong = {
        cell: code.name
        for cell, code in outcomes.items()
        if (cell[2] in EXPECTED[cell[0]][cell[1]])
        == (code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE))
    }
    assert not wrong, wrong
    denied = {cell for cell, code in outcomes.items() if code == grpc.StatusCode.PERMISSION_DENIED}

    # Router and subscriptions log each refusal with the caller (the audit line).
    logged = set(_refusals(stack))
    for service, method, identity in denied - {c for c in denied if c[0] == TOKENS}:
        assert (service, method, identity) in logged, (service, method, identity)
    # The vault records its refusals in its audit log, with the caller.
    audit = await cli(stack, "tokens", "audit", "--limit", "1000", "--json")
    records = {
        (r["caller"], r["action"])
        for r in json.loads(audit.stdout)
        if r["outcome"] == "PERMISSION_DENIED"
    }
    for _, method, identity in {c for c in denied if c[0] == TOKENS}:
        assert (identity, TOKEN_ACTIONS[method]) in records, (method, identity)


async def test_refusals_are_counted(secured: Stack) -> None:
    async with secured.channel("router", identity="gateway") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router_pb2_grpc.RouterServiceStub(channel).ListMessages(
                router_pb2.ListMessagesRequest(page_id=ACME_PAGE), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "'gateway' may not call ListMessages"
    # The router's metric, read through a metrics port of a second router replica.
    port = str(free_port())
    await secured.start(
        "router",
        name="router-metrics",
        PAGEWIRE_ROUTER_PORT=str(free_port()),
        PAGEWIRE_METRICS_PORT=port,
    )
    target = secured.procs["router-metrics"].port
    async with secured.channel("router", port=target, identity="gateway") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await router_pb2_grpc.RouterServiceStub(channel).SendMessage(
                router_pb2.SendMessageRequest(), timeout=5
            )
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    series = 'caller="gateway",method="SendMessage",service="RouterService"'
    assert f"pagewire_rpc_denied_total{{{series}}} 1.0" in text


@pytest.mark.parametrize("kind", ["foreign", "none"])
async def test_no_certificate_of_ours_is_refused_at_the_handshake(
    secured: Stack, foreign: DevPki, kind: str
) -> None:
    """Without a certificate of the suite's CA no RPC runs at all: the TLS handshake fails
    (gRPC's Python server can require a client certificate, not merely ask for one), so
    there is no method to refuse and nothing reaches the audit."""
    before = len(_refusals(secured))

    def channel_of(name: str) -> grpc.aio.Channel:
        target = f"127.0.0.1:{secured.ports[name]}"
        if kind == "foreign":
            return foreign.security("cli").channel(target, name)
        assert secured.pki is not None
        ca = secured.pki.files("cli")[0].read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.aio.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", name)]
        )

    for service in EXPECTED:
        for method in _methods(service):
            code = await _call(secured, service, method, channel_of)
            assert code == grpc.StatusCode.UNAVAILABLE, (service, method, code)
    assert len(_refusals(secured)) == before


async def _person_writes(stack: Stack, page: str, mid: str) -> None:
    now = int(time.time() * 1000)
    body = json.dumps(
        {
            "object": "page",
            "entry": [
                {
                    "id": page,
                    "time": now,
                    "messaging": [
                        {
                            "sender": {"id": USER},
                            "recipient": {"id": page},
                            "timestamp": now,
                            "message": {"mid": mid, "text": "¿Tienen talla 38?"},
                        }
                    ],
                }
            ],
        }
    ).encode()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{stack.gateway_url}/webhooks/facebook",
            content=body,
            headers={"X-Hub-Signature-256": sign(body)},
        )
    assert response.status_code == 200


async def _conversations(stack: Stack, account: str) -> list[router_pb2.Conversation]:
    async with stack.channel("router") as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).ListConversations(
            router_pb2.ListConversationsRequest(account_id=account), timeout=5
        )
    return list(reply.conversations)


async def _denied(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for _ in call:
                pass
        else:
            await call
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value
    return caught.value.details() or ""


async def test_readers_reach_their_accounts_only(
    secured: Stack, graph: fakegraph.FakeGraph
) -> None:
    stack = secured
    await _person_writes(stack, ACME_PAGE, "m_acme_1")
    await _person_writes(stack, GLOBEX_PAGE, "m_globex_1")
    (acme,) = await wait_for(lambda: _conversations(stack, "acme"), what="acme's conversation")
    (globex,) = await wait_for(lambda: _conversations(stack, "globex"), what="globex's")
    async with stack.channel("router", identity="app") as channel:
        app = router_pb2_grpc.RouterServiceStub(channel)
        mine = await app.ListMessages(
            router_pb2.ListMessagesRequest(conversation_id=acme.id), timeout=5
        )
        assert [m.mid for m in mine.messages] == ["m_acme_1"]
        assert (
            len(
                (
                    await app.ListConversations(
                        router_pb2.ListConversationsRequest(page_id=ACME_PAGE), timeout=5
                    )
                ).conversations
            )
            == 1
        )
        # Another account's data is refused, never an empty list.
        for call in (
            app.ListMessages(router_pb2.ListMessagesRequest(conversation_id=globex.id), timeout=5),
            app.ListMessages(router_pb2.ListMessagesRequest(page_id=GLOBEX_PAGE), timeout=5),
            app.ListConversations(
                router_pb2.ListConversationsRequest(account_id="globex"), timeout=5
            ),
            app.ListConversations(
                router_pb2.ListConversationsRequest(page_id=GLOBEX_PAGE), timeout=5
            ),
            app.ListEvents(router_pb2.ListEventsRequest(conversation_id=globex.id), timeout=5),
            app.ListEvents(router_pb2.ListEventsRequest(page_id=GLOBEX_PAGE), timeout=5),
            # A page nobody connected is refused too: it would tell which pages exist.
            app.ListEvents(router_pb2.ListEventsRequest(page_id="999999"), timeout=5),
            app.StreamEvents(router_pb2.StreamEventsRequest(account_id="globex"), timeout=5),
            app.SendMessage(
                router_pb2.SendMessageRequest(
                    conversation_id=globex.id, text="hola", idempotency_key="x-1"
                ),
                timeout=5,
            ),
            app.SendAction(
                router_pb2.SendActionRequest(conversation_id=globex.id, action="typing_on"),
                timeout=5,
            ),
        ):
            details = await _denied(call)
            assert "globex" not in details or "account 'globex'" in details
    assert not graph.state.send.sent, "a refused send reached Graph"
    async with stack.channel("subscriptions", identity="app") as channel:
        subs = subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)
        page = await subs.GetPage(
            subscriptions_pb2.GetPageRequest(platform=FB, page_id=ACME_PAGE), timeout=5
        )
        assert page.page.account_id == "acme"
        await _denied(
            subs.GetPage(
                subscriptions_pb2.GetPageRequest(platform=FB, page_id=GLOBEX_PAGE), timeout=5
            )
        )
        await _denied(
            subs.ListPages(subscriptions_pb2.ListPagesRequest(account_id="globex"), timeout=5)
        )
        await _denied(subs.ListPages(subscriptions_pb2.ListPagesRequest(), timeout=5))
    refused = [r for r in _refusals(stack) if r[2] == "app"]
    assert len(refused) == 13, refused


async def test_a_limited_operator_manages_its_accounts_pages_only(
    secured: Stack, tmp_path: Path
) -> None:
    """The attack seen before this layer: moving a Page to another account with an
    attacker's token. An operator limited to acme cannot take globex's page."""
    token = "EAAGattackerTOKEN000000000000000000000000000009"
    async with secured.channel("subscriptions", identity="helpdesk") as channel:
        desk = subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)
        for call in (
            desk.ConnectPage(
                subscriptions_pb2.ConnectPageRequest(
                    platform=FB, page_id=GLOBEX_PAGE, account_id="acme", page_token=token, move=True
                ),
                timeout=5,
            ),
            desk.ConnectPage(
                subscriptions_pb2.ConnectPageRequest(
                    platform=FB, page_id="123456", account_id="evil", page_token=token
                ),
                timeout=5,
            ),
            desk.DisconnectPage(
                subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=GLOBEX_PAGE), timeout=5
            ),
            desk.Resubscribe(
                subscriptions_pb2.ResubscribeRequest(platform=FB, page_id=GLOBEX_PAGE), timeout=5
            ),
            desk.Reconcile(subscriptions_pb2.ReconcileRequest(), timeout=5),
            desk.Reconcile(subscriptions_pb2.ReconcileRequest(account_id="globex"), timeout=5),
        ):
            await _denied(call)
        checked = await desk.Reconcile(
            subscriptions_pb2.ReconcileRequest(account_id="acme"), timeout=5
        )
        assert [p.page_id for p in checked.pages] == [ACME_PAGE]
    pages = json.loads((await cli(secured, "pages", "list", "--json")).stdout)
    assert {p["page_id"]: p["account_id"] for p in pages} == {
        ACME_PAGE: "acme",
        GLOBEX_PAGE: "globex",
    }


async def test_a_send_records_who_asked(secured: Stack, graph: fakegraph.FakeGraph) -> None:
    stack = secured
    await _person_writes(stack, ACME_PAGE, "m_acme_2")
    (acme,) = await wait_for(lambda: _conversations(stack, "acme"), what="acme's conversation")
    async with stack.channel("router", identity="app") as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).SendMessage(
            router_pb2.SendMessageRequest(
                conversation_id=acme.id, text="¡Sí!", idempotency_key="reply-1"
            ),
            timeout=10,
        )
    assert reply.state == router_pb2.ACCEPTED
    assert [m.sent_by for m in reply.messages] == ["app"]
    audit = json.loads(
        (await cli(stack, "tokens", "audit", "--page-id", ACME_PAGE, "--json")).stdout
    )
    decrypts = [r for r in audit if r["action"] == "DECRYPT" and r["caller"] == "router"]
    assert decrypts and decrypts[0]["on_behalf_of"] == "app", decrypts
