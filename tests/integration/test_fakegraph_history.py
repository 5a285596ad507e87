"""The fake Graph API's Conversations API over real HTTP: a scripted history paged as Graph
pages it, its shapes and errors, failures mid-way, and its signed webhooks caught by a tiny
real receiver."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pagewire import fakegraph
from tests.support.waiting import wait_for

PAGE = "109384756201938"  # Acme Shoes in the fake's default /me/accounts
IG = "17841405822304914"
AUTH = {"Authorization": "Bearer EAAGhistoryTOKEN0123456789"}
V = "/v25.0"
SECRET = "test_app_secret_0123456789abcdef"
NEWEST_MS = 1_778_163_045_000  # 2026-05-07T14:10:45Z
ALL_FIELDS = "id,created_time,from,to,message,attachments{image_data,video_data,file_url}"


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-hub-signature-256", ""), expected)

    def events(self) -> list[dict[str, Any]]:
        return [event for entry in self.json["entry"] for event in entry["messaging"]]


@dataclass
class Receiver:
    """A stand-in gateway on a real port: records every POST and answers 200."""

    url: str
    hits: list[Hit] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return [event for hit in self.hits for event in hit.events()]


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: pytest owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    found = Receiver(f"http://127.0.0.1:{sock.getsockname()[1]}")

    async def record(request: Request) -> Response:
        found.hits.append(Hit(request.url.path, dict(request.headers), await request.body()))
        return Response(status_code=200)

    app = Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started, what="the webhook receiver")
        yield found
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def fake(receiver: Receiver) -> AsyncIterator[fakegraph.FakeGraph]:
    # Depends on the receiver so that it stops first: no delivery outlives its receiver.
    server = await fakegraph.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http(fake: fakegraph.FakeGraph) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as client:
        yield client


async def control(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = await http.post(path, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def generate(http: httpx.AsyncClient, **settings: Any) -> dict[str, Any]:
    body = {"page_id": PAGE, "platform": "facebook", "newest_ms": NEWEST_MS, **settings}
    return await control(http, "/_fake/history/generate", body)


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ms / 1000))


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    return response.json()["error"]


async def walk(
    http: httpx.AsyncClient, path: str, params: dict[str, Any], *, by_next: bool
) -> list[dict[str, Any]]:
    """Every page of a cursor-paged edge, following `cursors.after` or the `next` URL."""
    pages = []
    url: str = path
    query: dict[str, Any] | None = dict(params)
    while True:
        response = await http.get(url, params=query, headers=AUTH)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        paging = pages[-1].get("paging", {})
        if "next" not in paging:
            assert "after" not in paging.get("cursors", {})
            return pages
        if by_next:
            url, query = paging["next"], None
        else:
            query = {**params, "after": paging["cursors"]["after"]}


def ids_of(pages: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for page in pages for item in page["data"]]


def newest_first(script: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(script["conversations"], key=lambda c: c["updated_time_ms"], reverse=True)


# --- paging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("by_next", [False, True], ids=["cursors.after", "paging.next"])
async def test_every_message_once_newest_first(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient, by_next: bool
) -> None:
    script = await generate(http, conversations=3, messages=150, seed=7)
    conversations = newest_first(script)
    assert len({c["updated_time_ms"] for c in conversations}) == 3

    params = {"platform": "messenger", "fields": "id,updated_time,participants", "limit": 2}
    pages = await walk(http, f"{V}/{PAGE}/conversations", params, by_next=by_next)
    assert [len(p["data"]) for p in pages] == [2, 1]
    assert ids_of(pages) == [c["id"] for c in conversations]
    listed = [c for p in pages for c in p["data"]]
    assert [c["updated_time"] for c in listed] == [iso(c["updated_time_ms"]) for c in conversations]

    for conversation in conversations:
        params = {"fields": "id,created_time,message", "limit": 25}
        pages = await walk(http, f"{V}/{conversation['id']}/messages", params, by_next=by_next)
        assert [len(p["data"]) for p in pages] == [25] * 6  # 150: the sixth page is the last
        expected = list(reversed(conversation["messages"]))
        assert ids_of(pages) == [m["id"] for m in expected]
        got = [m for p in pages for m in p["data"]]
        assert [m["created_time"] for m in got] == [iso(m["created_time_ms"]) for m in expected]
        texts = ["" if m["deleted"] else m["text"] for m in expected]
        assert [m["message"] for m in got] == texts
    assert len(set(ids_of(pages))) == 150
    # Every call was recorded: 2 conversation pages, 6 message pages per conversation.
    recorded = (await http.get("/_fake/requests")).json()["requests"]
    assert sum(r["path"].endswith("/conversations") for r in recorded) == 2
    assert sum(r["path"].endswith("/messages") for r in recorded) == 18
    if by_next:
        # The `next` URL carries the query, never a token.
        assert all("access_token" not in r["query"] for r in recorded)
        assert all(r["query"].get("fields") == "id,created_time,message" for r in recorded[2:])


async def test_generated_history_is_seeded_and_varied(http: httpx.AsyncClient) -> None:
    settings = {"conversations": 3, "messages": 40, "seed": 3, "deleted": 2}
    first = await generate(http, **settings)
    again = await generate(http, **settings)
    assert again == first
    other = await generate(http, **{**settings, "seed": 4})
    assert other["conversations"][0]["id"] != first["conversations"][0]["id"]

    for conversation in first["conversations"]:
        messages = conversation["messages"]
        times = [m["created_time_ms"] for m in messages]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert conversation["updated_time_ms"] == times[-1]
        assert conversation["id"].startswith("t_") and conversation["id"][2:].isdigit()
        assert all(m["id"].startswith("m_") for m in messages)
        assert sum(m["deleted"] for m in messages) == 2
        froms = [m["from"] for m in messages]
        assert froms[2::3] == ["page"] * 13 and froms.count("page") == 13  # page_every 3
        kinds = [a["type"] for m in messages[9::10] for a in m["attachments"]]
        assert len(kinds) == 4 and set(kinds) >= {"image", "video", "file"}
        assert sum(bool(m["attachments"]) for m in messages) == 4  # attachments_every 10
    texts = [m["text"] for c in first["conversations"] for m in c["messages"]]
    assert any(not t.isascii() for t in texts)
    assert any(any(ord(ch) > 0xFFFF for ch in t) for t in texts)  # emoji
    assert len(set(texts)) > 10
    assert len({c["user"]["name"] for c in first["conversations"]}) == 3


async def test_limit_is_clamped_and_a_bad_cursor_is_error_100(http: httpx.AsyncClient) -> None:
    script = await generate(http, conversations=1, messages=150)
    conversation_id = script["conversations"][0]["id"]
    page = (
        await http.get(f"{V}/{conversation_id}/messages", params={"limit": 500}, headers=AUTH)
    ).json()
    assert len(page["data"]) == 100 and "next" in page["paging"]
    default = (await http.get(f"{V}/{conversation_id}/messages", headers=AUTH)).json()
    assert len(default["data"]) == 25
    for params in ({"after": "not-a-cursor"}, {"limit": "many"}):
        response = await http.get(f"{V}/{conversation_id}/messages", params=params, headers=AUTH)
        assert error_of(response) == fakegraph.PRESETS["100"]


async def test_a_new_message_moves_nothing_under_a_paging_client(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    script = await generate(http, conversations=2, messages=30)
    fake.state.clock = lambda: (NEWEST_MS + 60_000) / 1000
    older, newer = sorted(script["conversations"], key=lambda c: c["updated_time_ms"])
    first = (
        await http.get(f"{V}/{older['id']}/messages", params={"limit": 10}, headers=AUTH)
    ).json()
    params = {"platform": "messenger", "fields": "id,updated_time,message_count", "limit": 1}
    top = (await http.get(f"{V}/{PAGE}/conversations", params=params, headers=AUTH)).json()
    assert ids_of([top]) == [newer["id"]]

    new = await control(
        http,
        "/_fake/history/message",
        {"page_id": PAGE, "user_id": older["user"]["id"], "text": "¿Siguen ahí? 👀"},
    )
    assert new["conversation_id"] == older["id"]
    assert new["message"]["created_time_ms"] == NEWEST_MS + 60_000  # the fake's "now"
    assert new["delivered"] is False and new["status"] is None  # no target known yet

    rest = await walk(
        http,
        f"{V}/{older['id']}/messages",
        {"limit": 10, "after": first["paging"]["cursors"]["after"]},
        by_next=True,
    )
    assert ids_of([first, *rest]) == [m["id"] for m in reversed(older["messages"])]
    # The conversation with the new message is now the newest, with one message more.
    listed = (await http.get(f"{V}/{PAGE}/conversations", params=params, headers=AUTH)).json()
    assert listed["data"][0] == {
        "id": older["id"],
        "updated_time": iso(new["message"]["created_time_ms"]),
        "message_count": 31,
    }
    messages = (await http.get(f"{V}/{older['id']}/messages", headers=AUTH)).json()["data"]
    assert messages[0]["id"] == new["message"]["id"]
    # Paging on from before the move: the moved conversation is above the cursor now, so it
    # is not met further down (nor is the first one met twice).
    after = top["paging"]["cursors"]["after"]
    rest = await walk(http, f"{V}/{PAGE}/conversations", {**params, "after": after}, by_next=False)
    assert rest == [{"data": []}]


# --- shapes ------------------------------------------------------------------------------------


def fb_script() -> dict[str, Any]:
    return {
        "page_id": PAGE,
        "platform": "facebook",
        "conversations": [
            {
                "id": "t_10161000000000001",
                "user": {"id": "7294015836620194", "name": "Ana Morales"},
                "messages": [
                    {"id": "m_first", "text": "Hola 👋", "created_time_ms": NEWEST_MS - 3000},
                    {
                        "id": "m_photo",
                        "created_time_ms": NEWEST_MS - 2000,
                        "attachments": [
                            {"type": "image", "url": "https://cdn.example/a/photo.jpg"},
                            {"type": "file", "url": "https://cdn.example/a/menu.pdf"},
                        ],
                    },
                    {
                        "id": "m_unsent",
                        "text": "oops",
                        "created_time_ms": NEWEST_MS - 1000,
                        "attachments": [{"type": "video", "url": "https://cdn.example/v.mp4"}],
                        "deleted": True,
                    },
                    {
                        "id": "m_reply",
                        "from": "page",
                        "text": "¡Hola!",
                        "created_time_ms": NEWEST_MS,
                    },
                ],
            },
            {
                "user": {"id": "7294015836620195"},
                "messages": [{"text": "Older one", "created_time_ms": NEWEST_MS - 86_400_000}],
            },
        ],
    }


async def test_fields_are_honoured(http: httpx.AsyncClient) -> None:
    script = await control(http, "/_fake/history", fb_script())
    assert script["page_name"] == "Acme Shoes"  # from the fake's /me/accounts
    made_up = script["conversations"][1]
    assert made_up["id"].startswith("t_") and made_up["messages"][0]["id"].startswith("m_")
    assert made_up["user"]["name"] == "User 0195"

    edge = f"{V}/{PAGE}/conversations"
    bare = (await http.get(edge, params={"platform": "messenger"}, headers=AUTH)).json()
    assert bare["data"] == [{"id": "t_10161000000000001"}, {"id": made_up["id"]}]
    params = {"platform": "MESSENGER", "fields": "participants,updated_time,message_count"}
    (full, _) = (await http.get(edge, params=params, headers=AUTH)).json()["data"]
    assert full == {
        "id": "t_10161000000000001",
        "updated_time": "2026-05-07T14:10:45+0000",
        "message_count": 4,
        "participants": {
            "data": [
                {
                    "name": "Ana Morales",
                    "email": "7294015836620194@facebook.com",
                    "id": "7294015836620194",
                },
                {"name": "Acme Shoes", "email": f"{PAGE}@facebook.com", "id": PAGE},
            ]
        },
    }

    messages = f"{V}/t_10161000000000001/messages"
    bare = (await http.get(messages, headers=AUTH)).json()["data"]
    assert [set(m) for m in bare] == [{"id", "created_time"}] * 4
    assert [m["id"] for m in bare] == ["m_reply", "m_unsent", "m_photo", "m_first"]
    text_only = (await http.get(messages, params={"fields": "message"}, headers=AUTH)).json()
    assert text_only["data"][0] == {"id": "m_reply", "message": "¡Hola!"}
    assert "attachments" not in text_only["data"][2]

    got = (await http.get(messages, params={"fields": ALL_FIELDS}, headers=AUTH)).json()["data"]
    reply, unsent, photo, first = got
    ana = full["participants"]["data"][0]
    acme = full["participants"]["data"][1]
    assert reply == {
        "id": "m_reply",
        "created_time": "2026-05-07T14:10:45+0000",
        "from": acme,
        "to": {"data": [ana]},
        "message": "¡Hola!",
    }
    # Unsent: an empty text, no attachments, nothing else special.
    assert unsent == {
        "id": "m_unsent",
        "created_time": "2026-05-07T14:10:44+0000",
        "from": ana,
        "to": {"data": [acme]},
        "message": "",
    }
    assert first["message"] == "Hola 👋" and "attachments" not in first
    image, document = photo["attachments"]["data"]
    assert photo["message"] == ""
    assert image["mime_type"] == "image/jpeg" and image["name"] == "photo.jpg"
    assert isinstance(image["size"], int) and image["id"].isdigit()
    assert image["image_data"]["url"] == "https://cdn.example/a/photo.jpg"
    assert {"preview_url", "width", "height"} <= set(image["image_data"])
    assert document["file_url"] == "https://cdn.example/a/menu.pdf"
    assert document["mime_type"] == "application/pdf" and "image_data" not in document
    # The script keeps what was unsent, and answers ids the Graph answers.
    stored = (await http.get("/_fake/history", params={"page_id": PAGE})).json()
    assert stored == script
    assert stored["conversations"][0]["messages"][2]["text"] == "oops"


async def test_video_attachment_and_round_trip(http: httpx.AsyncClient) -> None:
    script = fb_script()
    script["conversations"][0]["messages"][2]["deleted"] = False
    stored = await control(http, "/_fake/history", script)
    # The answered script can be posted back as it is, and answers the same.
    assert await control(http, "/_fake/history", stored) == stored
    got = await http.get(
        f"{V}/t_10161000000000001/messages", params={"fields": "attachments"}, headers=AUTH
    )
    (video,) = got.json()["data"][1]["attachments"]["data"]
    assert video["mime_type"] == "video/mp4"
    assert video["video_data"]["url"] == "https://cdn.example/v.mp4"
    assert "preview_url" in video["video_data"] and "image_data" not in video


async def test_instagram_shapes(http: httpx.AsyncClient) -> None:
    body = {"page_id": IG, "platform": "instagram", "page_name": "Acme Shoes", "seed": 2}
    script = await control(http, "/_fake/history/generate", {**body, "messages": 6})
    conversation = newest_first(script)[0]
    assert all(c["id"].startswith("aWdf") for c in script["conversations"])
    assert all(m["id"].startswith("aWdf") for m in conversation["messages"])

    params = {"platform": "instagram", "fields": "id,participants"}
    listed = await http.get(f"{V}/{IG}/conversations", params=params, headers=AUTH)
    first = listed.json()["data"][0]
    user = {"username": conversation["user"]["username"], "id": conversation["user"]["id"]}
    account = {"username": "acme.shoes", "id": IG}
    assert first == {"id": conversation["id"], "participants": {"data": [user, account]}}
    got = await http.get(
        f"{V}/{conversation['id']}/messages", params={"fields": "from,to"}, headers=AUTH
    )
    newest = got.json()["data"][0]
    assert newest["id"] == conversation["messages"][-1]["id"]
    sender = account if conversation["messages"][-1]["from"] == "page" else user
    assert newest["from"] == sender and set(newest["from"]) == {"username", "id"}
    # The account's Messenger conversations: none.
    other = await http.get(
        f"{V}/{IG}/conversations", params={"platform": "messenger"}, headers=AUTH
    )
    assert other.json() == {"data": []}


async def test_user_id_filter(http: httpx.AsyncClient) -> None:
    script = await generate(http, conversations=4, messages=3)
    wanted = script["conversations"][2]
    params = {"platform": "messenger", "user_id": wanted["user"]["id"], "fields": "id"}
    got = await http.get(f"{V}/{PAGE}/conversations", params=params, headers=AUTH)
    assert got.json()["data"] == [{"id": wanted["id"]}]
    assert "next" not in got.json()["paging"]
    nobody = await http.get(
        f"{V}/{PAGE}/conversations", params={**params, "user_id": "1"}, headers=AUTH
    )
    assert nobody.json() == {"data": []}


async def test_errors(http: httpx.AsyncClient) -> None:
    await generate(http, conversations=1, messages=2)
    edge = f"{V}/{PAGE}/conversations"
    for params in ({}, {"platform": "whatsapp"}):
        assert (
            error_of(await http.get(edge, params=params, headers=AUTH)) == fakegraph.PRESETS["100"]
        )
    unknown = error_of(await http.get(f"{V}/t_999/messages", headers=AUTH))
    assert (unknown["code"], unknown["error_subcode"]) == (100, 33)
    assert "Object with ID 't_999' does not exist" in unknown["message"]
    stranger = await http.get(
        f"{V}/1234/conversations", params={"platform": "messenger"}, headers=AUTH
    )
    assert stranger.status_code == 200 and stranger.json() == {"data": []}
    for headers in ({}, {"Authorization": "Bearer"}):
        refused = error_of(await http.get(edge, params={"platform": "messenger"}, headers=headers))
        assert refused["code"] == 190 and refused["type"] == "OAuthException"


# --- failures and usage ------------------------------------------------------------------------


async def test_a_failure_after_two_calls(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    script = await generate(http, conversations=1, messages=100)
    conversation_id = script["conversations"][0]["id"]
    rule = {
        "method": "GET",
        "path_contains": "/messages",
        "preset": "613",
        "after": 2,
        "times": 1,
        "headers": {"Retry-After": "3"},
    }
    told = await http.post("/_fake/fail", json=rule)
    assert told.status_code == 200 and told.json()["failure"]["after"] == 2

    url = f"{V}/{conversation_id}/messages"
    params: dict[str, Any] = {"limit": 25}
    statuses = []
    # A conversations call does not match the rule, so it does not count.
    listed = await http.get(
        f"{V}/{PAGE}/conversations", params={"platform": "messenger"}, headers=AUTH
    )
    assert listed.status_code == 200
    for _ in range(5):
        response = await http.get(url, params=params, headers=AUTH)
        statuses.append(response.status_code)
        if response.status_code == 200:
            params["after"] = response.json()["paging"]["cursors"].get("after")
        else:
            assert response.json() == {"error": fakegraph.PRESETS["613"]}
            assert response.headers["retry-after"] == "3"
            assert "x-business-use-case-usage" in response.headers
    assert statuses == [200, 200, 400, 200, 200]  # the retried third page, then the fourth
    assert fake.state.failures == []
    assert len(fake.state.requests_to("GET", "/messages")) == 5


async def test_bad_after_is_refused(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    for after in (-1, "2", True):
        response = await http.post("/_fake/fail", json={"preset": "613", "after": after})
        assert response.status_code == 400 and "after" in response.json()["error"]
    assert fake.state.failures == []


async def test_usage_headers_on_history_answers(http: httpx.AsyncClient) -> None:
    script = await generate(http, conversations=1, messages=2)
    usage = {"call_count": 95, "total_time": 12, "total_cputime": 9}
    business = '{"109384756201938":[{"type":"messenger","call_count":80}]}'
    headers = {"X-App-Usage": usage, "X-Business-Use-Case-Usage": business}
    told = await control(http, "/_fake/history/usage", {"headers": headers})
    assert told["headers"]["X-App-Usage"] == '{"call_count":95,"total_time":12,"total_cputime":9}'
    for path, params in (
        (f"{V}/{PAGE}/conversations", {"platform": "messenger"}),
        (f"{V}/{script['conversations'][0]['id']}/messages", {}),
    ):
        response = await http.get(path, params=params, headers=AUTH)
        assert response.status_code == 200
        assert json.loads(response.headers["x-app-usage"]) == usage
        assert response.headers["x-business-use-case-usage"] == business
    # Errors and other routes carry none of them.
    error = await http.get(f"{V}/{PAGE}/conversations", headers=AUTH)
    assert error.status_code == 400 and "x-app-usage" not in error.headers
    other = await http.get(f"{V}/{PAGE}/subscribed_apps", headers=AUTH)
    assert "x-app-usage" not in other.headers
    await control(http, "/_fake/history/usage", {"headers": {}})
    again = await http.get(
        f"{V}/{PAGE}/conversations", params={"platform": "messenger"}, headers=AUTH
    )
    assert "x-app-usage" not in again.headers


# --- webhooks ----------------------------------------------------------------------------------


def deliver_body(receiver: Receiver, page_id: str = PAGE, **extra: Any) -> dict[str, Any]:
    return {"page_id": page_id, "gateway_url": receiver.url, "app_secret": SECRET, **extra}


async def test_deliver_posts_signed_webhooks_of_the_same_mids(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    script = await generate(
        http, conversations=2, messages=8, deleted=1, page_every=3, attachments_every=4
    )
    every = sorted(
        ((c, m) for c in script["conversations"] for m in c["messages"]),
        key=lambda pair: pair[1]["created_time_ms"],
    )
    live = [(c, m) for c, m in every if not m["deleted"]]
    answer = await control(http, "/_fake/history/deliver", deliver_body(receiver))
    assert answer["posted"] == 14 and answer["statuses"] == [200] * 14
    assert answer["mids"] == [m["id"] for _, m in live]
    assert answer["skipped"] == []
    assert sorted(answer["deleted"]) == sorted(m["id"] for _, m in every if m["deleted"])

    assert len(receiver.hits) == 14
    assert all(h.path == "/webhooks/facebook" and h.signed_with(SECRET) for h in receiver.hits)
    assert not receiver.hits[0].signed_with("another secret")
    assert all(h.json["object"] == "page" for h in receiver.hits)
    assert all(h.json["entry"][0]["id"] == PAGE for h in receiver.hits)
    # The same mids the Conversations API answers.
    graph_mids = set()
    for conversation in script["conversations"]:
        got = await http.get(f"{V}/{conversation['id']}/messages", headers=AUTH)
        graph_mids |= {m["id"] for m in got.json()["data"]}
    assert {e["message"]["mid"] for e in receiver.events()} < graph_mids
    for (conversation, message), event in zip(live, receiver.events(), strict=True):
        user = {"id": conversation["user"]["id"]}
        assert event["timestamp"] == message["created_time_ms"]
        expected: dict[str, Any] = {"mid": message["id"]}
        if message["from"] == "page":
            assert (event["sender"], event["recipient"]) == ({"id": PAGE}, user)
            expected.update(is_echo=True, app_id=int(fakegraph.FAKE_APP_ID))
        else:
            assert (event["sender"], event["recipient"]) == (user, {"id": PAGE})
        if message["text"]:
            expected["text"] = message["text"]
        if message["attachments"]:
            expected["attachments"] = [
                {"type": a["type"], "payload": {"url": a["url"]}} for a in message["attachments"]
            ]
        assert event["message"] == expected
    assert any("attachments" in e["message"] for e in receiver.events())
    assert any(e["message"].get("is_echo") for e in receiver.events())
    assert fake.state.history.webhook_statuses == [200] * 14


async def test_deliver_leaves_out_what_it_is_told(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    script = await generate(http, conversations=1, messages=12, deleted=0)
    mids = [m["id"] for m in script["conversations"][0]["messages"]]
    answer = await control(
        http,
        "/_fake/history/deliver",
        deliver_body(receiver, skip=[mids[0]], skip_every=4, per_post=3),
    )
    left_out = [mids[0], mids[3], mids[7], mids[11]]
    assert answer["skipped"] == left_out
    delivered = [mid for mid in mids if mid not in left_out]
    assert answer["mids"] == delivered and answer["posted"] == 8
    # Three messages per POST, each its own entry, as Meta batches them.
    assert answer["statuses"] == [200] * 3
    assert [len(h.json["entry"]) for h in receiver.hits] == [3, 3, 2]
    assert [e["message"]["mid"] for e in receiver.events()] == delivered

    chosen = await control(
        http,
        "/_fake/history/deliver",
        deliver_body(receiver, mids=[mids[5], mids[1]], app_id=1234),
    )
    assert chosen["mids"] == [mids[5], mids[1]]  # in the order asked
    echo, customer = [e["message"] for h in receiver.hits[3:] for e in h.events()]
    assert (echo["mid"], customer["mid"]) == (mids[5], mids[1])
    assert echo["is_echo"] is True and echo["app_id"] == 1234  # the sixth is the page's
    refused = await http.post("/_fake/history/deliver", json=deliver_body(receiver, mids=["m_x"]))
    assert refused.status_code == 400 and "m_x" in refused.json()["error"]


async def test_instagram_deliver_and_a_new_message_delivered(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    body = {"page_id": IG, "platform": "instagram", "messages": 3, "conversations": 1}
    script = await control(http, "/_fake/history/generate", {**body, "deleted": 0})
    conversation = script["conversations"][0]
    answer = await control(http, "/_fake/history/deliver", deliver_body(receiver, IG))
    assert answer["posted"] == 3
    assert all(h.path == "/webhooks/instagram" and h.signed_with(SECRET) for h in receiver.hits)
    assert all(h.json["object"] == "instagram" for h in receiver.hits)
    assert [e["message"]["mid"] for e in receiver.events()] == [
        m["id"] for m in conversation["messages"]
    ]

    # The remembered target takes the webhook of a message that arrives now.
    new = await control(
        http,
        "/_fake/history/message",
        {"page_id": IG, "user_id": "6742019384756999", "text": "new here 🙂", "id": "aWdf_new"},
    )
    assert new["delivered"] is True and new["status"] == 200
    assert new["conversation_id"].startswith("aWdf")
    assert new["conversation_id"] != conversation["id"]
    (event,) = receiver.hits[-1].events()
    assert event["message"] == {"mid": "aWdf_new", "text": "new here 🙂"}
    assert event["sender"] == {"id": "6742019384756999"} and event["recipient"] == {"id": IG}
    echo = await control(
        http,
        "/_fake/history/message",
        {"page_id": IG, "user_id": "6742019384756999", "from": "page", "text": "hi!"},
    )
    (event,) = receiver.hits[-1].events()
    assert event["message"]["mid"] == echo["message"]["id"] and event["message"]["is_echo"]
    assert event["sender"] == {"id": IG}
    quiet = await control(
        http,
        "/_fake/history/message",
        {"page_id": IG, "user_id": "6742019384756999", "text": "x", "deliver": False},
    )
    assert quiet["delivered"] is False and len(receiver.hits) == 5
    params = {"platform": "instagram", "fields": "message_count", "user_id": "6742019384756999"}
    listed = await http.get(f"{V}/{IG}/conversations", params=params, headers=AUTH)
    assert listed.json()["data"] == [{"id": new["conversation_id"], "message_count": 3}]
    taken = await http.post(
        "/_fake/history/message",
        json={"page_id": IG, "user_id": "6742019384756999", "text": "x", "id": "aWdf_new"},
    )
    assert taken.status_code == 400 and "used twice" in taken.json()["error"]


# --- the control API ---------------------------------------------------------------------------


async def test_reset_forgets_histories(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    script = await generate(http, conversations=1, messages=2)
    await control(http, "/_fake/history/usage", {"headers": {"X-App-Usage": "{}"}})
    assert (await http.post("/_fake/reset")).json() == {"ok": True}
    assert fake.state.history.pages == {} and fake.state.history.usage_headers == {}
    gone = await http.get(f"{V}/{script['conversations'][0]['id']}/messages", headers=AUTH)
    assert error_of(gone)["error_subcode"] == 33
    shown = await http.get("/_fake/history", params={"page_id": PAGE})
    assert shown.status_code == 404
    assert (await http.get("/_fake/history")).json() == {"ok": True, "pages": []}


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/_fake/history", {"platform": "facebook"}, "page_id"),
        ("/_fake/history", {"page_id": PAGE, "platform": "whatsapp"}, "platform"),
        ("/_fake/history", {"page_id": PAGE, "conversations": [{"messages": []}]}, "user"),
        (
            "/_fake/history",
            {"page_id": PAGE, "conversations": [{"user": {"id": "1"}, "messages": []}]},
            "at least one message",
        ),
        (
            "/_fake/history",
            {"page_id": PAGE, "conversations": [{"user": {"id": "1"}, "messages": [{}]}]},
            "created_time_ms",
        ),
        (
            "/_fake/history",
            {
                "page_id": PAGE,
                "conversations": [
                    {"user": {"id": "1"}, "messages": [{"text": "a", "created_time_ms": 1}]},
                    {"user": {"id": "1"}, "messages": [{"text": "b", "created_time_ms": 2}]},
                ],
            },
            "two conversations",
        ),
        (
            "/_fake/history",
            {
                "page_id": PAGE,
                "conversations": [
                    {
                        "user": {"id": "1"},
                        "messages": [
                            {"id": "m_1", "text": "a", "created_time_ms": 1},
                            {"id": "m_1", "text": "b", "created_time_ms": 2},
                        ],
                    }
                ],
            },
            "used twice",
        ),
        (
            "/_fake/history",
            {
                "page_id": PAGE,
                "conversations": [
                    {
                        "user": {"id": "1"},
                        "messages": [
                            {
                                "created_time_ms": 1,
                                "attachments": [{"type": "sticker", "url": "https://x/y"}],
                            }
                        ],
                    }
                ],
            },
            "attachment type",
        ),
        ("/_fake/history/generate", {"page_id": PAGE, "messages": 0}, "messages"),
        ("/_fake/history/generate", {"page_id": PAGE, "newest_ms": 5}, "newest_ms"),
        ("/_fake/history/message", {"page_id": PAGE, "user_id": "1", "text": "x"}, "no history"),
        ("/_fake/history/deliver", {"page_id": PAGE}, "no history"),
        ("/_fake/history/usage", {"headers": []}, "headers"),
    ],
)
async def test_bad_control_bodies(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient, path: str, body: Any, says: str
) -> None:
    response = await http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["ok"] is False and says in response.json()["error"]
    assert fake.state.history.pages == {}


async def test_deliver_needs_a_gateway(http: httpx.AsyncClient) -> None:
    await generate(http, conversations=1, messages=2)
    for extra in ({"gateway_url": "", "app_secret": SECRET}, {"gateway_url": "http://x"}):
        response = await http.post("/_fake/history/deliver", json={"page_id": PAGE, **extra})
        assert response.status_code == 400 and not response.json()["ok"]


async def test_an_unreachable_gateway_is_status_0(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    await generate(http, conversations=1, messages=2, deleted=0, page_every=0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    body = {"page_id": PAGE, "gateway_url": f"http://127.0.0.1:{port}", "app_secret": SECRET}
    answer = await control(http, "/_fake/history/deliver", {**body, "per_post": 2})
    assert answer["posted"] == 2 and answer["statuses"] == [0]
    # Meta would retry it; the retry is in flight until the fake stops.
    assert len(fake.state.send.tasks) == 1
