"""The fake Graph API over real HTTP: Graph's shapes, request recording, the control API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from pagewire import fakegraph
from tests.support.waiting import wait_for

PAGE = "109384756201938"
TOKEN = "EAAGfakeGRAPHtoken0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EDGE = f"/v25.0/{PAGE}/subscribed_apps"


@pytest.fixture
async def fake() -> AsyncIterator[fakegraph.FakeGraph]:
    server = await fakegraph.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http(fake: fakegraph.FakeGraph) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=5) as client:
        yield client


async def test_subscribe_list_unsubscribe(http: httpx.AsyncClient) -> None:
    empty = await http.get(EDGE, headers=AUTH)
    assert empty.status_code == 200 and empty.json() == {"data": []}

    posted = await http.post(EDGE, headers=AUTH, data={"subscribed_fields": "messages,standby"})
    assert posted.status_code == 200 and posted.json() == {"success": "true"}

    listed = (await http.get(EDGE, headers=AUTH)).json()
    (app,) = listed["data"]
    assert app["id"] == fakegraph.FAKE_APP_ID
    assert app["subscribed_fields"] == ["messages", "standby"]
    assert {"category", "link", "name"} <= set(app)

    pages = (await http.get("/_fake/pages")).json()
    assert pages == {"pages": {PAGE: {"subscribed_fields": ["messages", "standby"]}}}

    deleted = await http.delete(EDGE, headers=AUTH)
    assert deleted.status_code == 200 and deleted.json() == {"success": True}
    assert (await http.get(EDGE, headers=AUTH)).json() == {"data": []}


async def test_requests_are_recorded(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    await http.post(f"{EDGE}?debug=all", headers=AUTH, data={"subscribed_fields": "messages"})
    await http.post(EDGE, json={"subscribed_fields": ["messages"], "access_token": "q"})
    await http.get("/_fake/pages")  # control calls are not Graph requests

    recorded = (await http.get("/_fake/requests")).json()["requests"]
    assert recorded == fake.state.requests
    first, second = recorded
    assert first["method"] == "POST" and first["path"] == EDGE
    assert first["query"] == {"debug": "all"}
    assert first["form"] == {"subscribed_fields": "messages"}
    assert first["has_authorization"] and first["bearer_token"] == TOKEN
    assert second["json"] == {"subscribed_fields": ["messages"], "access_token": "q"}
    assert not second["has_authorization"] and second["bearer_token"] is None


async def test_no_token_is_an_oauth_error(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        response = await http.post(EDGE, headers=headers, data={"subscribed_fields": "messages"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "OAuthException" and error["code"] == 190


async def test_subscribe_needs_fields(http: httpx.AsyncClient) -> None:
    response = await http.post(EDGE, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 100


async def test_unknown_path_is_a_graph_error(http: httpx.AsyncClient) -> None:
    response = await http.get(f"/v25.0/{PAGE}/conversations", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "OAuthException"


@pytest.mark.parametrize("preset", sorted(fakegraph.PRESETS))
async def test_presets(http: httpx.AsyncClient, preset: str) -> None:
    told = await http.post("/_fake/fail", json={"preset": preset})
    assert told.status_code == 200 and told.json()["ok"]
    response = await http.post(EDGE, headers=AUTH, data={"subscribed_fields": "messages"})
    assert response.status_code == 400
    assert response.json() == {"error": fakegraph.PRESETS[preset]}
    code, _, subcode = preset.partition("_")
    assert response.json()["error"]["code"] == int(code)
    if subcode:
        assert response.json()["error"]["error_subcode"] == int(subcode)
    # One failure by default, then Graph answers normally again.
    again = await http.post(EDGE, headers=AUTH, data={"subscribed_fields": "messages"})
    assert again.status_code == 200


async def test_rate_limit_preset_carries_usage_headers(http: httpx.AsyncClient) -> None:
    await http.post("/_fake/fail", json={"preset": "613"})
    response = await http.post(EDGE, headers=AUTH, data={"subscribed_fields": "messages"})
    usage = json.loads(response.headers["x-business-use-case-usage"])
    assert usage[PAGE][0]["estimated_time_to_regain_access"] == 2
    assert json.loads(response.headers["x-app-usage"])["call_count"] == 28


async def test_server_error_preset_has_no_graph_body(http: httpx.AsyncClient) -> None:
    await http.post("/_fake/fail", json={"preset": "500"})
    response = await http.get(EDGE, headers=AUTH)
    assert response.status_code == 500
    with pytest.raises(ValueError):
        response.json()


FIXTURE_OF_PRESET = {
    "190_460": "error_190_460.json",
    "190_463": "error_190_463.json",
    "613": "error_613.json",
    "551": "error_551.json",
    "10_2018278": "error_10_2018278.json",
    "100": "error_100.json",
    "2": "error_2_transient.json",
    "100_2018218": "error_2018218_no_profile.json",
}


def test_presets_are_the_fixture_shapes(fixtures_dir) -> None:  # type: ignore[no-untyped-def]
    graph = fixtures_dir / "graph"
    assert set(FIXTURE_OF_PRESET) == set(fakegraph.PRESETS)
    for preset, name in FIXTURE_OF_PRESET.items():
        assert json.loads((graph / name).read_text()) == {"error": fakegraph.PRESETS[preset]}
    headers = json.loads((graph / "error_613_headers.json").read_text())
    assert fakegraph.PRESET_HEADERS["613"] == headers
    assert json.loads((graph / "subscribed_apps_post.json").read_text()) == {"success": "true"}


async def test_custom_error_status_method_path_and_times(http: httpx.AsyncClient) -> None:
    rule = {
        "method": "delete",
        "path_contains": "subscribed_apps",
        "status": 403,
        "error": {"message": "nope", "type": "OAuthException", "code": 200},
        "times": 2,
    }
    assert (await http.post("/_fake/fail", json=rule)).status_code == 200
    # Other methods and paths are not affected.
    assert (await http.get(EDGE, headers=AUTH)).status_code == 200
    for _ in range(2):
        response = await http.delete(EDGE, headers=AUTH)
        assert response.status_code == 403 and response.json()["error"]["message"] == "nope"
    assert (await http.delete(EDGE, headers=AUTH)).status_code == 200


async def test_failure_until_reset(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    await http.post("/_fake/fail", json={"preset": "2", "times": None})
    for _ in range(3):
        assert (await http.get(EDGE, headers=AUTH)).status_code == 400
    await http.post(EDGE, headers=AUTH, data={"subscribed_fields": "messages"})
    assert (await http.post("/_fake/reset")).json() == {"ok": True}
    assert fake.state.requests == [] and fake.state.pages == {} and fake.state.failures == []
    assert (await http.get(EDGE, headers=AUTH)).status_code == 200


async def test_custom_body(http: httpx.AsyncClient) -> None:
    rule = {"method": "POST", "body": {"success": True}, "headers": {"X-App-Usage": "{}"}}
    assert (await http.post("/_fake/fail", json=rule)).status_code == 200
    response = await http.post(EDGE, headers=AUTH, data={"subscribed_fields": "messages"})
    assert response.status_code == 200 and response.json() == {"success": True}
    assert response.headers["x-app-usage"] == "{}"


@pytest.mark.parametrize(
    "body",
    [
        {"preset": "999"},
        {"preset": "613", "error": {"code": 1}},
        {"error": {"code": 1}, "body": {}},
        {"error": "boom"},
        {"times": 0},
        {"delay_s": -1},
        {"status": 42},
        [],
    ],
)
async def test_bad_fail_requests(fake: fakegraph.FakeGraph, http, body) -> None:  # type: ignore[no-untyped-def]
    response = await http.post("/_fake/fail", json=body)
    assert response.status_code == 400 and not response.json()["ok"]
    assert fake.state.failures == []


async def test_delay_then_answer(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    fake.state.fail(method="GET", delay_s=0.2)
    started = time.monotonic()
    response = await http.get(EDGE, headers=AUTH)
    assert response.status_code == 200 and response.json() == {"data": []}
    assert time.monotonic() - started >= 0.2


async def test_stop_does_not_wait_for_a_delayed_answer() -> None:
    fake = await fakegraph.start()
    fake.state.fail(delay_s=60)
    async with httpx.AsyncClient(base_url=fake.url, timeout=30) as client:
        pending = asyncio.create_task(client.get(EDGE, headers=AUTH))
        await wait_for(lambda: fake.state.requests, what="the delayed request to arrive")
        started = time.monotonic()
        await fake.stop()
        assert time.monotonic() - started < 5
        response = await pending
        assert response.status_code == 200


async def test_two_fakes_run_side_by_side() -> None:
    first, second = await fakegraph.start(), await fakegraph.start()
    try:
        assert first.url != second.url
        async with httpx.AsyncClient(timeout=5) as client:
            await client.post(
                first.url + EDGE, headers=AUTH, data={"subscribed_fields": "messages"}
            )
        assert len(first.state.requests) == 1 and second.state.requests == []
    finally:
        await first.stop()
        await second.stop()


# --- the page lifecycle's routes ----------------------------------------------------------------


async def test_me_accounts_pages_with_cursors(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient, fixtures_dir
) -> None:  # type: ignore[no-untyped-def]
    first = (await http.get("/v25.0/me/accounts", params={"limit": 2}, headers=AUTH)).json()
    fixture = json.loads((fixtures_dir / "graph" / "me_accounts_page1.json").read_text())
    assert first["data"] == fixture["data"]
    assert set(first["paging"]) == {"cursors", "next"}
    assert "access_token=REDACTED" in first["paging"]["next"]
    after = first["paging"]["cursors"]["after"]
    second = (
        await http.get("/v25.0/me/accounts", params={"limit": 2, "after": after}, headers=AUTH)
    ).json()
    fixture2 = json.loads((fixtures_dir / "graph" / "me_accounts_page2.json").read_text())
    assert second["data"] == fixture2["data"] and "next" not in second["paging"]


async def test_accounts_per_user_token_and_page_size(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    pages = [{"id": str(100 + n), "name": f"P{n}", "access_token": f"EAAGp{n}"} for n in range(3)]
    told = await http.post("/_fake/accounts", json={"user_token": "EAAGuser", "pages": pages})
    assert told.json() == {"ok": True}
    fake.state.accounts_page_size = 2
    user = {"Authorization": "Bearer EAAGuser"}
    first = (await http.get("/v25.0/me/accounts", params={"limit": 100}, headers=user)).json()
    assert [p["id"] for p in first["data"]] == ["100", "101"] and first["paging"]["next"]
    bad = await http.post("/_fake/accounts", json={"user_token": "", "pages": []})
    assert bad.status_code == 400


async def test_silently_unsubscribed(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    await http.post(EDGE, headers=AUTH, data={"subscribed_fields": "messages,standby"})
    told = await http.post("/_fake/unsubscribe", json={"page_id": PAGE, "fields": ["standby"]})
    assert told.json() == {"ok": True}
    (app,) = (await http.get(EDGE, headers=AUTH)).json()["data"]
    assert app["subscribed_fields"] == ["messages"]
    await http.post("/_fake/unsubscribe", json={"page_id": PAGE})
    assert (await http.get(EDGE, headers=AUTH)).json() == {"data": []}
    missing = await http.post("/_fake/unsubscribe", json={"page_id": PAGE})
    assert missing.status_code == 404
    assert (await http.post("/_fake/unsubscribe", json={"page_id": "x"})).status_code == 400


async def test_refresh_access_token(fake: fakegraph.FakeGraph, http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/refresh_access_token", params={"grant_type": "ig_refresh_token"}, headers=AUTH
    )
    body = response.json()
    assert body["token_type"] == "bearer" and body["access_token"].startswith("IGAArefreshed")
    assert body["expires_in"] == fakegraph.IG_REFRESH_EXPIRES_IN
    assert fake.state.refreshed == [(TOKEN, body["access_token"])]
    wrong = await http.get("/refresh_access_token", headers=AUTH)
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == 100


async def test_debug_token(http: httpx.AsyncClient, fixtures_dir) -> None:  # type: ignore[no-untyped-def]
    response = await http.get("/v25.0/debug_token", params={"input_token": "x"}, headers=AUTH)
    data = response.json()["data"]
    fixture = json.loads((fixtures_dir / "graph" / "debug_token.json").read_text())["data"]
    assert set(fixture) - {"profile_id"} <= set(data)
    assert data["app_id"] == fakegraph.FAKE_APP_ID and data["is_valid"] is True


async def test_rate_limit_header_names_the_page_called(http: httpx.AsyncClient) -> None:
    other = "117465829304716"
    await http.post("/_fake/fail", json={"preset": "613"})
    response = await http.get(f"/v25.0/{other}/subscribed_apps", headers=AUTH)
    usage = json.loads(response.headers["x-business-use-case-usage"])
    assert list(usage) == [other]


async def test_request_times_follow_the_given_clock(
    fake: fakegraph.FakeGraph, http: httpx.AsyncClient
) -> None:
    fake.state.clock = lambda: 1234.5
    await http.get(EDGE, headers=AUTH)
    assert fake.state.requests[0]["time_ms"] == 1234500
