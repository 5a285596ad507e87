"""The fake Graph API's comments over real HTTP: replies, private replies, moderation, lists,
errors by code, and the signed webhooks a Page sends, caught by a tiny local receiver."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pagewire import fakecomments, fakegraph
from tests.support.waiting import wait_for

PAGE = "109384756201938"  # Acme Shoes in the fake's default /me/accounts
PAGE_TOKEN = "EAAGpage1tokenXXXXXXXXXXXXXXXXXXXXXXXX"
AUTH = {"Authorization": f"Bearer {PAGE_TOKEN}"}
POST = f"{PAGE}_5550001"
CID = "5550001_7770001"
AUTHOR = {"id": "6000000000000001", "name": "Ana Pérez"}
IG = "17841405822304914"
IG_MEDIA = "17895695668004550"
IG_CID = "17858893269000001"
IG_AUTHOR = {"id": "6742019384756123", "username": "ana.perez"}
SECRET = "test_app_secret_0123456789abcdef"
IG_SECRET = "test_ig_app_secret_fedcba9876543210"
V = "/v25.0"
WEEK_S = 7 * 86400


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


@dataclass
class Receiver:
    """A stand-in gateway: records every POST and answers 200."""

    url: str
    hits: asyncio.Queue[Hit]

    async def next(self) -> Hit:
        return await asyncio.wait_for(self.hits.get(), 10)


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hits: asyncio.Queue[Hit]
) -> None:
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            await hits.put(Hit(path, headers, body))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hits: asyncio.Queue[Hit] = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: _serve_connection(r, w, hits), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Receiver(f"http://127.0.0.1:{port}", hits)
    finally:
        server.close()
        await server.wait_closed()


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


async def seed(http: httpx.AsyncClient, *comments: dict[str, Any]) -> list[str]:
    answer = await http.post("/_fake/comments", json={"comments": list(comments)})
    assert answer.status_code == 200, answer.text
    return answer.json()["ids"]


def fb_comment(**extra: Any) -> dict[str, Any]:
    return {
        "page_id": PAGE,
        "post_id": POST,
        "comment_id": CID,
        "text": "¿Tienen talla 38? 🙂",
        "author": AUTHOR,
        **extra,
    }


def ig_comment(**extra: Any) -> dict[str, Any]:
    return {
        "platform": "instagram",
        "page_id": IG,
        "post_id": IG_MEDIA,
        "comment_id": IG_CID,
        "text": "Precio?",
        "author": IG_AUTHOR,
        **extra,
    }


def private_reply(comment_id: str, text: str = "Te escribimos por privado") -> dict[str, str]:
    return {
        "recipient": json.dumps({"comment_id": comment_id}),
        "message": json.dumps({"text": text}),
    }


async def echo_to(http: httpx.AsyncClient, receiver: Receiver, **settings: Any) -> None:
    body = {"gateway_url": receiver.url, "app_secret": SECRET, "delay_s": 0, **settings}
    answer = await http.post("/_fake/echo", json=body)
    assert answer.status_code == 200, answer.text


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    return response.json()["error"]


def change_of(hit: Hit) -> dict[str, Any]:
    (entry,) = hit.json["entry"]
    (change,) = entry["changes"]
    return change


# --- success shapes -----------------------------------------------------------------------------


async def test_facebook_public_reply(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    await seed(http, fb_comment())
    response = await http.post(f"{V}/{CID}/comments", headers=AUTH, data={"message": "¡Sí! 🙂"})
    assert response.status_code == 200
    (new_id,) = response.json().values()
    assert set(response.json()) == {"id"}
    assert new_id.startswith("5550001_") and new_id != CID
    # A JSON body is taken as well as a form.
    second = await http.post(f"{V}/{CID}/comments", headers=AUTH, json={"message": "Otra"})
    assert second.status_code == 200 and second.json()["id"] != new_id

    replies = (await http.get(f"{V}/{CID}/comments", headers=AUTH)).json()["data"]
    assert [r["id"] for r in replies] == [new_id, second.json()["id"]]
    assert replies[0]["message"] == "¡Sí! 🙂"
    assert replies[0]["from"] == {"id": PAGE, "name": "Acme Shoes"}
    top = (await http.get(f"{V}/{POST}/comments", headers=AUTH)).json()["data"]
    assert [c["id"] for c in top] == [CID]
    assert set(top[0]) == {"id", "message", "created_time", "from"}
    assert top[0]["from"] == AUTHOR and top[0]["message"] == "¿Tienen talla 38? 🙂"
    assert len(fake.state.requests_to("POST", f"/{CID}/comments")) == 2


async def test_instagram_public_reply(http: httpx.AsyncClient) -> None:
    await seed(http, ig_comment())
    response = await http.post(f"{V}/{IG_CID}/replies", headers=AUTH, data={"message": "20 €"})
    assert response.status_code == 200
    new_id = response.json()["id"]
    assert set(response.json()) == {"id"} and new_id.isdigit() and new_id != IG_CID

    top = (await http.get(f"{V}/{IG_MEDIA}/comments", headers=AUTH)).json()["data"]
    assert [c["id"] for c in top] == [IG_CID]
    assert set(top[0]) == {"id", "text", "timestamp"}
    fields = "from,parent_id,media,text"
    replies = (
        await http.get(f"{V}/{IG_CID}/replies", params={"fields": fields}, headers=AUTH)
    ).json()["data"]
    assert replies == [
        {
            "id": new_id,
            "text": "20 €",
            "from": {"id": IG, "username": f"account{IG[-4:]}"},
            "parent_id": IG_CID,
            "media": {"id": IG_MEDIA, "media_product_type": "FEED"},
        }
    ]


async def test_get_one_comment(http: httpx.AsyncClient) -> None:
    await seed(http, fb_comment())
    fields = "message,is_hidden,can_reply_privately"
    got = await http.get(f"{V}/{CID}", params={"fields": fields}, headers=AUTH)
    assert got.json() == {
        "id": CID,
        "message": "¿Tienen talla 38? 🙂",
        "is_hidden": False,
        "can_reply_privately": True,
    }


async def test_unknown_comment_is_taken_as_just_made(http: httpx.AsyncClient) -> None:
    response = await http.post(f"{V}/4440001_1/comments", headers=AUTH, data={"message": "Hola"})
    assert response.status_code == 200 and response.json()["id"].startswith("4440001_")
    known = {c["id"]: c for c in (await http.get("/_fake/comments")).json()["comments"]}
    # Its page from the token (Acme Shoes' in /me/accounts), its post from its id.
    assert known["4440001_1"]["page_id"] == PAGE
    assert known["4440001_1"]["post_id"] == f"{PAGE}_4440001"
    assert known[response.json()["id"]]["parent_id"] == "4440001_1"

    await http.post("/_fake/comments", json={"strict": True})
    strict = await http.post(f"{V}/4440002_1/comments", headers=AUTH, data={"message": "Hola"})
    assert error_of(strict) == fakecomments.missing("post", "4440002_1")


async def test_wrong_edge_or_parameter_is_error_100(http: httpx.AsyncClient) -> None:
    await seed(http, fb_comment(), ig_comment())
    for path in (f"{V}/{IG_CID}/comments", f"{V}/{CID}/replies"):
        error = error_of(await http.post(path, headers=AUTH, data={"message": "x"}))
        assert error["code"] == 100 and "nonexisting field" in error["message"]
        assert error_of(await http.get(path, headers=AUTH))["code"] == 100
    for data in ({}, {"message": "  "}):
        response = await http.post(f"{V}/{CID}/comments", headers=AUTH, data=data)
        assert error_of(response) == fakegraph.PRESETS["100"]


# --- private replies ----------------------------------------------------------------------------


async def test_one_private_reply_per_comment(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    await seed(http, fb_comment())
    first = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply(CID))
    assert first.status_code == 200
    assert set(first.json()) == {"recipient_id", "message_id"}
    assert first.json()["recipient_id"] == AUTHOR["id"]
    assert first.json()["message_id"].startswith("m_")

    again = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply(CID))
    assert error_of(again) == fakecomments.ALREADY_REPLIED
    assert len(fake.state.requests_to("POST", f"/{PAGE}/messages")) == 2
    (sent,) = fake.state.send.sent
    assert sent["comment_id"] == CID and sent["mid"] == first.json()["message_id"]
    assert sent["message"] == {"text": "Te escribimos por privado"}
    got = await http.get(f"{V}/{CID}", params={"fields": "can_reply_privately"}, headers=AUTH)
    assert got.json()["can_reply_privately"] is False


async def test_instagram_private_reply_as_json_reaches_the_psid(http: httpx.AsyncClient) -> None:
    await seed(http, ig_comment(psid="6742019384750000"))
    body = {"recipient": {"comment_id": IG_CID}, "message": {"text": "Hola"}}
    answer = await http.post(f"{V}/{IG}/messages", headers=AUTH, json=body)
    assert answer.status_code == 200 and answer.json()["recipient_id"] == "6742019384750000"


async def test_private_reply_only_within_seven_days(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    now = [1_800_000_000.0]
    fake.state.clock = lambda: now[0]
    await seed(
        http,
        fb_comment(comment_id="5550001_1", created_time=now[0] - WEEK_S + 60),
        fb_comment(comment_id="5550001_2", created_time=now[0] - WEEK_S - 60),
        fb_comment(comment_id="5550001_3"),  # made now, by the fake's clock
    )
    ok = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply("5550001_1"))
    assert ok.status_code == 200
    late = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply("5550001_2"))
    assert error_of(late) == fakegraph.PRESETS["10_2018278"]

    now[0] += WEEK_S + 1
    aged = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply("5550001_3"))
    assert error_of(aged)["code"] == 10 and error_of(aged)["error_subcode"] == 2018278
    flags = (
        await http.get(
            f"{V}/{POST}/comments", params={"fields": "can_reply_privately"}, headers=AUTH
        )
    ).json()["data"]
    assert [f["can_reply_privately"] for f in flags] == [False, False, False]


async def test_private_reply_to_a_deleted_or_foreign_comment(http: httpx.AsyncClient) -> None:
    await seed(http, fb_comment(), fb_comment(comment_id="5550001_9"))
    other_page = "117465829304716"
    foreign = await http.post(f"{V}/{other_page}/messages", headers=AUTH, data=private_reply(CID))
    assert error_of(foreign) == fakecomments.INVALID_COMMENT_ID
    assert (await http.delete(f"{V}/5550001_9", headers=AUTH)).status_code == 200
    gone = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply("5550001_9"))
    assert error_of(gone)["error_subcode"] == 2018292
    no_message = {"recipient": json.dumps({"comment_id": CID})}
    response = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=no_message)
    assert error_of(response) == fakegraph.PRESETS["100"]
    # Ordinary sends are still the Send API's.
    send = {"recipient": json.dumps({"id": "7294015836620194"}), "message": '{"text": "x"}'}
    answer = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=send)
    assert answer.json()["recipient_id"] == "7294015836620194"


# --- moderation ---------------------------------------------------------------------------------


async def test_hide_and_unhide(http: httpx.AsyncClient) -> None:
    await seed(http, fb_comment(), ig_comment())
    for value, hidden in (("true", True), ("false", False), ("true", True)):
        answer = await http.post(f"{V}/{CID}", headers=AUTH, data={"is_hidden": value})
        assert answer.status_code == 200 and answer.json() == {"success": True}
        got = await http.get(f"{V}/{CID}", params={"fields": "is_hidden"}, headers=AUTH)
        assert got.json()["is_hidden"] is hidden
    answer = await http.post(f"{V}/{IG_CID}", headers=AUTH, data={"hide": "true"})
    assert answer.json() == {"success": True}
    got = await http.get(f"{V}/{IG_CID}", params={"fields": "hidden"}, headers=AUTH)
    assert got.json()["hidden"] is True
    # A hidden comment is still listed, marked.
    listed = await http.get(f"{V}/{POST}/comments", params={"fields": "is_hidden"}, headers=AUTH)
    assert listed.json()["data"] == [{"id": CID, "is_hidden": True}]

    bad = (
        (CID, {"hide": "true"}),  # Instagram's parameter on a Facebook comment
        (IG_CID, {"is_hidden": "true"}),
        (CID, {"is_hidden": "maybe"}),
        (CID, {"is_hidden": "true", "hide": "true"}),
        (CID, {}),
    )
    for comment_id, data in bad:
        response = await http.post(f"{V}/{comment_id}", headers=AUTH, data=data)
        assert error_of(response) == fakegraph.PRESETS["100"], data


async def test_delete_then_the_comment_does_not_exist(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    await seed(http, fb_comment(), ig_comment())
    for comment_id in (CID, IG_CID):
        first = await http.delete(f"{V}/{comment_id}", headers=AUTH)
        assert first.status_code == 200 and first.json() == {"success": True}
        again = error_of(await http.delete(f"{V}/{comment_id}", headers=AUTH))
        assert again == fakecomments.missing("delete", comment_id)
        assert again["code"] == 100 and again["error_subcode"] == 33
        assert again["type"] == "GraphMethodException"
    assert error_of(await http.get(f"{V}/{CID}", headers=AUTH))["error_subcode"] == 33
    hide = await http.post(f"{V}/{CID}", headers=AUTH, data={"is_hidden": "true"})
    assert error_of(hide) == fakecomments.missing("post", CID)
    reply = await http.post(f"{V}/{CID}/comments", headers=AUTH, data={"message": "x"})
    assert error_of(reply)["error_subcode"] == 33
    listed = await http.get(f"{V}/{POST}/comments", headers=AUTH)
    assert listed.json() == {"data": []}
    assert len(fake.state.requests_to("DELETE", f"/{CID}")) == 2


# --- lists --------------------------------------------------------------------------------------


async def test_comments_list_pages_with_cursors(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    base = time.time() - 3600
    ids = await seed(
        http,
        *(fb_comment(comment_id=f"5550001_{n}", created_time=base + n) for n in (5, 3, 1, 4, 2)),
    )
    assert len(ids) == 5
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    for expected in (2, 2, 1):
        page = (await http.get(f"{V}/{POST}/comments", params=params, headers=AUTH)).json()
        seen += [c["id"] for c in page["data"]]
        assert len(page["data"]) == expected
        assert set(page["paging"]["cursors"]) == {"before", "after"}
        if expected == 1:
            assert "next" not in page["paging"]
        else:
            assert page["paging"]["next"].startswith(f"{fake.url}/v25.0/{POST}/comments?")
            assert "access_token" not in page["paging"]["next"]
            params = {"limit": 2, "after": page["paging"]["cursors"]["after"]}
    assert seen == [f"5550001_{n}" for n in (1, 2, 3, 4, 5)]  # oldest first
    empty = await http.get(f"{V}/{PAGE}_999/comments", headers=AUTH)
    assert empty.json() == {"data": []}
    bad = await http.get(f"{V}/{POST}/comments", params={"limit": "many"}, headers=AUTH)
    assert error_of(bad)["code"] == 100


# --- the token: the Authorization header, never the URL -----------------------------------------

CALLS = [
    ("POST", f"{V}/{CID}/comments", {"message": "x"}),
    ("POST", f"{V}/{IG_CID}/replies", {"message": "x"}),
    ("POST", f"{V}/{PAGE}/messages", private_reply(CID)),
    ("POST", f"{V}/{CID}", {"is_hidden": "true"}),
    ("POST", f"{V}/{IG_CID}", {"hide": "true"}),
    ("DELETE", f"{V}/{CID}", None),
    ("GET", f"{V}/{POST}/comments", None),
    ("GET", f"{V}/{CID}", None),
]


@pytest.mark.parametrize(("method", "path", "form"), CALLS)
async def test_the_token_only_in_the_bearer_header(
    fake: fakegraph.FakeGraph,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    form: dict[str, str] | None,
) -> None:
    await seed(http, fb_comment(), ig_comment())
    attempts: list[tuple[dict[str, str], dict[str, str], dict[str, str] | None]] = [
        ({}, {}, form),
        ({"Authorization": "Basic abc"}, {}, form),
        ({"Authorization": "Bearer"}, {}, form),
        (AUTH, {"access_token": PAGE_TOKEN}, form),
        ({}, {"access_token": PAGE_TOKEN}, form),
    ]
    if form is not None:
        attempts.append(({}, {}, {**form, "access_token": PAGE_TOKEN}))
    for headers, query, data in attempts:
        response = await http.request(method, path, headers=headers, params=query, data=data)
        error = error_of(response)
        assert error["type"] == "OAuthException" and error["code"] == 190, (headers, query)
    token_in_url = await http.request(
        method, path, headers=AUTH, params={"access_token": PAGE_TOKEN}, data=form
    )
    assert error_of(token_in_url) == fakecomments.TOKEN_NOT_IN_HEADER
    assert len(fake.state.requests_to(method, path)) == len(attempts) + 1
    # Nothing was done: the comments are as seeded, no private reply was used.
    states = (await http.get("/_fake/comments")).json()["comments"]
    assert [(c["id"], c["hidden"], c["deleted"], c["private_replied"]) for c in states] == [
        (CID, False, False, False),
        (IG_CID, False, False, False),
    ]
    ok = await http.request(method, path, headers=AUTH, data=form)
    assert ok.status_code == 200, ok.text


# --- injected failures --------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["190_460", "613", "2", "100"])
@pytest.mark.parametrize(("method", "path", "form"), CALLS[:4] + CALLS[5:7])
async def test_injected_failures(
    fake: fakegraph.FakeGraph,
    http: httpx.AsyncClient,
    preset: str,
    method: str,
    path: str,
    form: dict[str, str] | None,
) -> None:
    await seed(http, fb_comment(), ig_comment())
    fake.state.fail(method=method, path_contains=path.removeprefix(V), preset=preset)
    failed = await http.request(method, path, headers=AUTH, data=form)
    assert failed.status_code == 400 and failed.json() == {"error": fakegraph.PRESETS[preset]}
    if preset == "613":
        usage = json.loads(failed.headers["x-business-use-case-usage"])
        (entries,) = usage.values()
        assert entries[0]["estimated_time_to_regain_access"] == 2
        assert json.loads(failed.headers["x-app-usage"])["call_count"] == 28
    # The failed call did nothing: the same call then succeeds (a private reply too).
    ok = await http.request(method, path, headers=AUTH, data=form)
    assert ok.status_code == 200, ok.text
    assert len(fake.state.requests_to(method, path)) == 2


async def test_failures_through_the_control_api(http: httpx.AsyncClient) -> None:
    await seed(http, fb_comment())
    rule = {"method": "POST", "path_contains": "/comments", "preset": "2", "times": 2}
    assert (await http.post("/_fake/fail", json=rule)).json()["ok"]
    for _ in range(2):
        response = await http.post(f"{V}/{CID}/comments", headers=AUTH, data={"message": "x"})
        assert error_of(response)["is_transient"] is True
    response = await http.post(f"{V}/{CID}/comments", headers=AUTH, data={"message": "x"})
    assert response.status_code == 200
    slow = {"method": "DELETE", "path_contains": CID, "status": 500, "preset": "500"}
    await http.post("/_fake/fail", json=slow)
    assert (await http.delete(f"{V}/{CID}", headers=AUTH)).status_code == 500
    assert (await http.delete(f"{V}/{CID}", headers=AUTH)).json() == {"success": True}


# --- the webhooks a Page sends ------------------------------------------------------------------


async def test_facebook_webhooks(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await echo_to(http, receiver)
    told = await http.post(
        "/_fake/comment",
        json={"page_id": PAGE, "post_id": POST, "text": "¿Envían a Cali?", "author": AUTHOR},
    )
    assert told.status_code == 200 and told.json()["webhook"] is True
    customer_id = told.json()["comment"]["id"]

    hit = await receiver.next()
    assert hit.path == "/webhooks/facebook" and hit.signed_with(SECRET)
    assert hit.json["object"] == "page" and hit.json["entry"][0]["id"] == PAGE
    change = change_of(hit)
    assert change["field"] == "feed"
    created = change["value"].pop("created_time")
    assert isinstance(created, int) and abs(created - time.time()) < 60
    assert change["value"] == {
        "from": AUTHOR,
        "post_id": POST,
        "comment_id": customer_id,
        "parent_id": POST,  # a top-level comment's parent is the post
        "item": "comment",
        "verb": "add",
        "message": "¿Envían a Cali?",
    }

    reply = await http.post(f"{V}/{customer_id}/comments", headers=AUTH, data={"message": "Sí"})
    reply_id = reply.json()["id"]
    hit = await receiver.next()
    assert hit.signed_with(SECRET)
    value = change_of(hit)["value"]
    assert value["verb"] == "add" and value["item"] == "comment"
    assert value["comment_id"] == reply_id and value["post_id"] == POST
    assert value["parent_id"] == customer_id and value["message"] == "Sí"
    assert value["from"] == {"id": PAGE, "name": "Acme Shoes"}
    assert isinstance(value["created_time"], int)

    for data, verb in (({"is_hidden": "true"}, "hide"), ({"is_hidden": "false"}, "unhide")):
        await http.post(f"{V}/{customer_id}", headers=AUTH, data=data)
        # Asking again for what already is changes nothing, so Meta sends nothing.
        await http.post(f"{V}/{customer_id}", headers=AUTH, data=data)
        value = change_of(await receiver.next())["value"]
        assert (value["verb"], value["comment_id"]) == (verb, customer_id)

    await http.delete(f"{V}/{reply_id}", headers=AUTH)
    hit = await receiver.next()
    value = change_of(hit)["value"]
    assert value["verb"] == "remove" and value["comment_id"] == reply_id
    assert value["parent_id"] == customer_id and "message" not in value

    answer = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply(customer_id))
    hit = await receiver.next()
    assert hit.path == "/webhooks/facebook" and hit.signed_with(SECRET)
    (entry,) = hit.json["entry"]
    (item,) = entry["messaging"]
    assert item["sender"] == {"id": PAGE} and item["recipient"] == {"id": AUTHOR["id"]}
    assert item["message"]["is_echo"] is True
    assert item["message"]["mid"] == answer.json()["message_id"]
    assert item["message"]["text"] == "Te escribimos por privado"
    assert receiver.hits.empty()
    # The receiver queues a hit before it answers: the fake records the 200 just after.
    await wait_for(lambda: fake.state.comments.webhook_statuses == [200] * 5, what="5 statuses")
    await wait_for(lambda: fake.state.send.echo_statuses == [200], what="the echo's status")


async def test_instagram_webhooks(http: httpx.AsyncClient, receiver: Receiver) -> None:
    await echo_to(http, receiver, instagram_app_secret=IG_SECRET)
    told = await http.post(
        "/_fake/comment",
        json={
            "platform": "instagram",
            "page_id": IG,
            "post_id": IG_MEDIA,
            "text": "Precio?",
            "author": IG_AUTHOR,
            "media_product_type": "REELS",
        },
    )
    customer_id = told.json()["comment"]["id"]
    hit = await receiver.next()
    assert hit.path == "/webhooks/instagram" and hit.signed_with(IG_SECRET)
    assert not hit.signed_with(SECRET)
    assert hit.json["object"] == "instagram" and hit.json["entry"][0]["id"] == IG
    change = change_of(hit)
    assert change == {
        "field": "comments",
        "value": {
            "from": IG_AUTHOR,
            "media": {"id": IG_MEDIA, "media_product_type": "REELS"},
            "id": customer_id,
            "text": "Precio?",
        },
    }

    reply = await http.post(f"{V}/{customer_id}/replies", headers=AUTH, data={"message": "20 €"})
    value = change_of(await receiver.next())["value"]
    assert value == {
        "from": {"id": IG, "username": f"account{IG[-4:]}"},
        "media": {"id": IG_MEDIA, "media_product_type": "REELS"},
        "id": reply.json()["id"],
        "text": "20 €",
        "parent_id": customer_id,
    }

    # Instagram tells nothing of hidden or deleted comments: the next webhook is the echo.
    await http.post(f"{V}/{customer_id}", headers=AUTH, data={"hide": "true"})
    await http.delete(f"{V}/{reply.json()['id']}", headers=AUTH)
    answer = await http.post(f"{V}/{IG}/messages", headers=AUTH, data=private_reply(customer_id))
    hit = await receiver.next()
    assert hit.path == "/webhooks/instagram" and hit.signed_with(IG_SECRET)
    assert hit.json["object"] == "instagram"
    (entry,) = hit.json["entry"]
    assert entry["id"] == IG
    (item,) = entry["messaging"]
    assert item["recipient"] == {"id": IG_AUTHOR["id"]}
    assert item["message"]["mid"] == answer.json()["message_id"]
    assert item["message"]["is_echo"] is True
    assert receiver.hits.empty()


async def test_early_webhook_is_there_before_the_answer(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await seed(http, fb_comment())
    # Early: the answer waits for the gateway's answer to the first attempt (at most delay_s).
    await echo_to(http, receiver, mode="early", delay_s=30)
    started = time.monotonic()
    reply = await http.post(f"{V}/{CID}/comments", headers=AUTH, data={"message": "Sí"})
    assert reply.status_code == 200 and time.monotonic() - started < 20
    assert receiver.hits.qsize() == 1
    assert change_of(receiver.hits.get_nowait())["value"]["comment_id"] == reply.json()["id"]
    answer = await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply(CID))
    assert answer.status_code == 200 and receiver.hits.qsize() == 1
    (entry,) = receiver.hits.get_nowait().json["entry"]
    assert entry["messaging"][0]["message"]["mid"] == answer.json()["message_id"]


async def test_comment_webhooks_can_be_turned_off(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await seed(http, fb_comment())
    await echo_to(http, receiver, comments=False)
    await http.post(f"{V}/{CID}/comments", headers=AUTH, data={"message": "Sí"})
    told = await http.post("/_fake/comment", json={"page_id": PAGE, "text": "Hola"})
    assert told.json()["webhook"] is False
    # The private reply's echo is a message echo, not a comment webhook: it still comes.
    await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply(CID))
    hit = await receiver.next()
    assert "messaging" in hit.json["entry"][0] and receiver.hits.empty()


# --- the control API ----------------------------------------------------------------------------


async def test_customer_comment_defaults_and_no_webhook_without_a_target(
    http: httpx.AsyncClient,
) -> None:
    told = await http.post("/_fake/comment", json={"page_id": PAGE, "text": "Hola"})
    body = told.json()
    assert body["ok"] and body["webhook"] is False
    comment = body["comment"]
    assert comment["platform"] == "facebook" and comment["post_id"].startswith(f"{PAGE}_")
    assert comment["id"].startswith(comment["post_id"].split("_")[1] + "_")
    assert comment["author_id"] and comment["author_name"]
    reply = await http.post(
        "/_fake/comment", json={"page_id": PAGE, "text": "Yo también", "parent_id": comment["id"]}
    )
    assert reply.json()["comment"]["post_id"] == comment["post_id"]
    listed = await http.get(f"{V}/{comment['id']}/comments", headers=AUTH)
    assert [c["message"] for c in listed.json()["data"]] == ["Yo también"]


@pytest.mark.parametrize(
    "body",
    [
        {"text": "no page"},
        {"page_id": "acme", "text": "x"},
        {"page_id": PAGE},
        {"page_id": PAGE, "text": "x", "platform": "tiktok"},
        {"page_id": PAGE, "text": "x", "created_time": "yesterday"},
        {"page_id": PAGE, "text": "x", "author": "ana"},
        {"page_id": PAGE, "text": "x", "post_id": 5},
        [],
    ],
)
async def test_bad_comment_bodies(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient, body: Any
) -> None:
    told = await http.post("/_fake/comment", json=body)
    assert told.status_code == 400 and not told.json()["ok"]
    seeded = await http.post("/_fake/comments", json={"comments": [body]})
    assert seeded.status_code == 400
    assert fake.state.comments.comments == {}


async def test_bad_echo_settings(http: httpx.AsyncClient) -> None:
    for body in ({"app_secret": "s"}, {"gateway_url": "http://x", "app_secret": "s", "mode": "x"}):
        assert (await http.post("/_fake/echo", json=body)).status_code == 400


async def test_reset_forgets_comments(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    await seed(http, fb_comment())
    await http.post("/_fake/comments", json={"strict": True})
    await http.post(f"{V}/{PAGE}/messages", headers=AUTH, data=private_reply(CID))
    await http.post("/_fake/reset")
    assert fake.state.comments.comments == {} and not fake.state.comments.strict
    assert (await http.get("/_fake/comments")).json() == {"comments": []}
