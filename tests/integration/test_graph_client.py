"""The shared Graph client against the fake Graph API: auth, errors by code, retries, backoff.

Time is a VirtualClock shared by the client and the fake, so backoff of
minutes is measured from the fake's request timestamps without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator

import pytest

from pagewire import fakegraph
from pagewire.graph import ConversationsApi, GraphClient, GraphError, GraphSettings, PagesApi, codes
from pagewire.graph.ratelimit import Backoff, regain_access_s
from pagewire.kit.settings import Secret
from tests.integration.test_subscriptions import VirtualClock

PAGE = "109384756201938"
OTHER = "117465829304716"
TOKEN = "EAAGgraphCLIENTtoken0123456789abcdefXYZ"
USER_TOKEN = "EAAGuserTOKENforIMPORT0123456789abcdef"
SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def fake() -> AsyncIterator[fakegraph.FakeGraph]:
    server = await fakegraph.start()
    yield server
    await server.stop()


@pytest.fixture
def clock(fake: fakegraph.FakeGraph) -> VirtualClock:
    virtual = VirtualClock()
    fake.state.clock = virtual.time
    return virtual


def make_client(fake: fakegraph.FakeGraph, clock: VirtualClock, **settings: object) -> GraphClient:
    return GraphClient(
        GraphSettings(url=fake.url, instagram_url=fake.url, **settings),  # type: ignore[arg-type]
        clock=clock,
        rng=lambda: 1.0,  # the top of each jitter range, so bounds are exact
    )


@pytest.fixture
async def api(fake: fakegraph.FakeGraph, clock: VirtualClock) -> AsyncIterator[PagesApi]:
    client = make_client(fake, clock)
    yield PagesApi(client)
    await client.aclose()


def times_s(fake: fakegraph.FakeGraph, method: str, path: str) -> list[float]:
    return [r["time_ms"] / 1000 for r in fake.state.requests_to(method, path)]


# --- the codes table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "subcode", "invalid"),
    [(190, 0, True), (190, 460, True), (190, 463, True), (102, 0, True), (102, 33, False)]
    + [(code, 0, False) for code in (1, 2, 4, 10, 17, 32, 100, 551, 613, 1200)],
)
def test_token_invalid_by_code_only(code: int, subcode: int, invalid: bool) -> None:
    assert codes.is_token_invalid(code, subcode) is invalid
    error = GraphError(http_status=400, code=code, subcode=subcode, message="whatever it says")
    assert error.token_invalid is invalid


def test_retryable_codes_and_meanings() -> None:
    assert {c for c in range(3000) if codes.is_retryable(c)} == {1, 2, 4, 17, 32, 613, 1200}
    assert "password" in codes.meaning(190, 460)
    assert "expired" in codes.meaning(190, 463)
    assert codes.meaning(190, 99999) == codes.meaning(190)  # unknown subcode: the code's meaning
    assert codes.meaning(424242) == ""
    # A message that sounds like a dead token is not one unless the code says so.
    error = GraphError(http_status=400, code=100, message="Error validating access token")
    assert not error.token_invalid


# --- requests -------------------------------------------------------------------------------


async def test_token_only_in_the_authorization_header(
    fake: fakegraph.FakeGraph, api: PagesApi
) -> None:
    await api.subscribe("FACEBOOK", PAGE, Secret(TOKEN), ["messages", "standby"])
    apps = await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    assert [(a.app_id, a.fields) for a in apps] == [
        (fakegraph.FAKE_APP_ID, ("messages", "standby"))
    ]
    await api.unsubscribe("FACEBOOK", PAGE, Secret(TOKEN))
    assert [r["method"] for r in fake.state.requests] == ["POST", "GET", "DELETE"]
    for request in fake.state.requests:
        assert request["path"] == f"/v25.0/{PAGE}/subscribed_apps"
        assert request["bearer_token"] == TOKEN
        assert request["query"] == {} and TOKEN not in request["raw_query"]
        assert "access_token" not in (request["form"] or {})


async def test_appsecret_proof_when_configured(
    fake: fakegraph.FakeGraph, clock: VirtualClock
) -> None:
    client = make_client(fake, clock, app_secret=Secret(SECRET))
    try:
        await PagesApi(client).subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    finally:
        await client.aclose()
    (request,) = fake.state.requests
    expected = hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    assert request["query"] == {"appsecret_proof": expected}
    assert SECRET not in json.dumps(request)


async def test_typed_error_carries_graph_fields(fake: fakegraph.FakeGraph, api: PagesApi) -> None:
    fake.state.fail(preset="190_460")
    with pytest.raises(GraphError) as caught:
        await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    error = caught.value
    assert (error.http_status, error.code, error.subcode) == (400, 190, 460)
    assert error.type == "OAuthException" and error.fbtrace_id == "AzX8kq2hPZl3nTqQf1bR9sV"
    assert "password" in error.message and "password" in error.meaning
    assert error.token_invalid and not error.transient
    assert len(fake.state.requests) == 1  # a refused token is never retried
    assert TOKEN not in repr(error) and TOKEN not in str(error)


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [{"preset": "2"}, {"preset": "500"}, {"error": {"code": 1}}])
async def test_retryable_failures_are_retried_with_backoff(
    fake: fakegraph.FakeGraph, api: PagesApi, clock: VirtualClock, failure: dict[str, object]
) -> None:
    fake.state.fail(times=2, **failure)
    assert await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN)) == []
    assert len(fake.state.requests) == 3
    # rng 1.0: the full step each time, base 0.5 s doubling.
    assert clock.sleeps == [0.5, 1.0]
    first, second, third = times_s(fake, "GET", "subscribed_apps")
    assert second - first == pytest.approx(0.5) and third - second == pytest.approx(1.0)


async def test_retries_stop_after_max_attempts(
    fake: fakegraph.FakeGraph, api: PagesApi, clock: VirtualClock
) -> None:
    fake.state.fail(preset="500", times=None)
    with pytest.raises(GraphError) as caught:
        await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    assert caught.value.http_status == 500 and caught.value.code == 0
    assert len(fake.state.requests) == 3


@pytest.mark.parametrize("preset", ["100", "10_2018278", "551"])
async def test_permanent_errors_are_not_retried(
    fake: fakegraph.FakeGraph, api: PagesApi, clock: VirtualClock, preset: str
) -> None:
    fake.state.fail(preset=preset, times=None)
    with pytest.raises(GraphError):
        await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    assert len(fake.state.requests) == 1 and clock.sleeps == []


async def test_timeouts_are_retried(fake: fakegraph.FakeGraph, clock: VirtualClock) -> None:
    fake.state.fail(delay_s=30, times=1)  # the first answer comes too late
    client = make_client(fake, clock, timeout_s=0.2)
    try:
        assert await PagesApi(client).subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN)) == []
    finally:
        await client.aclose()
    assert len(fake.state.requests) == 2


def test_backoff_is_jittered_and_capped() -> None:
    low = Backoff(base_s=1.0, cap_s=8.0, rng=lambda: 0.0)
    high = Backoff(base_s=1.0, cap_s=8.0, rng=lambda: 1.0)
    assert [low.delay(n) for n in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 0.8])
    assert [high.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]


# --- rate limits --------------------------------------------------------------------------------


def test_usage_header_is_parsed_in_minutes(fixtures_dir) -> None:  # type: ignore[no-untyped-def]
    import httpx

    headers = json.loads((fixtures_dir / "graph" / "error_613_headers.json").read_text())
    response = httpx.Response(400, headers=headers)
    assert regain_access_s(response) == {PAGE: 120.0}
    assert regain_access_s(httpx.Response(200)) == {}
    assert regain_access_s(httpx.Response(200, headers={"X-Business-Use-Case-Usage": "{"})) == {}


async def test_613_wait_inside_one_call_is_honoured(
    fake: fakegraph.FakeGraph, clock: VirtualClock
) -> None:
    # A budget longer than Graph's 2 minutes: the call waits them out, then succeeds.
    fake.state.fail(preset="613", times=1)
    client = make_client(fake, clock, retry_max_wait_s=300)
    try:
        assert await PagesApi(client).subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN)) == []
    finally:
        await client.aclose()
    first, second = times_s(fake, "GET", "subscribed_apps")
    assert second - first >= 120


async def test_613_longer_than_the_budget_holds_the_page_for_later_calls(
    fake: fakegraph.FakeGraph, api: PagesApi, clock: VirtualClock
) -> None:
    fake.state.fail(preset="613", times=None, path_contains=PAGE)
    with pytest.raises(GraphError) as caught:
        await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    assert caught.value.code == 613 and caught.value.retry_after_s == pytest.approx(120)
    assert len(fake.state.requests) == 1  # not retried at once: that would make it worse

    # Within the two minutes nothing leaves for this page...
    for _ in range(3):
        clock.now += 30
        with pytest.raises(GraphError) as held:
            await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
        assert held.value.throttled and held.value.transient
    assert len(fake.state.requests) == 1
    # ... while another page is not held.
    assert await api.subscribed_apps("FACEBOOK", OTHER, Secret(TOKEN)) == []
    # Once the time is up, Graph is asked again.
    clock.now += 31
    with pytest.raises(GraphError):
        await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    first, second = times_s(fake, "GET", f"{PAGE}/subscribed_apps")
    assert second - first >= 120


async def test_rate_limit_without_header_still_backs_off(
    fake: fakegraph.FakeGraph, api: PagesApi, clock: VirtualClock
) -> None:
    fake.state.fail(error={"code": 17, "message": "User request limit reached"}, times=2)
    assert await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN)) == []
    stamps = times_s(fake, "GET", "subscribed_apps")
    assert len(stamps) == 3
    assert all(b - a >= 0.5 for a, b in zip(stamps, stamps[1:], strict=False))


# --- /me/accounts and Instagram refresh ---------------------------------------------------------


async def test_managed_pages_follows_the_cursor(fake: fakegraph.FakeGraph, api: PagesApi) -> None:
    fake.state.accounts_page_size = 2
    pages = await api.managed_pages(Secret(USER_TOKEN))
    assert [p.page_id for p in pages] == [
        "109384756201938",
        "117465829304716",
        "126374859203746",
    ]
    assert pages[2].token == Secret("EAAGpage3tokenXXXXXXXXXXXXXXXXXXXXXXXX")
    assert "MODERATE" in pages[0].tasks and pages[0].name == "Acme Shoes"
    assert "EAAGpage" not in repr(pages)
    first, second = fake.state.requests_to("GET", "me/accounts")
    assert "after" not in first["query"] and second["query"]["after"]
    assert {r["bearer_token"] for r in (first, second)} == {USER_TOKEN}
    assert all("access_token" not in r["query"] for r in (first, second))


async def test_refresh_instagram_token(fake: fakegraph.FakeGraph, api: PagesApi) -> None:
    refreshed = await api.refresh_instagram_token("17841405822304914", Secret(TOKEN))
    ((old, new),) = fake.state.refreshed
    assert old == TOKEN and refreshed.token == Secret(new)
    assert refreshed.expires_in_s == fakegraph.IG_REFRESH_EXPIRES_IN
    (request,) = fake.state.requests
    assert request["path"] == "/refresh_access_token"
    assert request["query"] == {"grant_type": "ig_refresh_token"}
    assert request["bearer_token"] == TOKEN


async def test_failures_are_logged_by_code_without_the_token(
    fake: fakegraph.FakeGraph, api: PagesApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.state.fail(preset="190_463")
    with pytest.raises(GraphError):
        await api.subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
    (record,) = [r for r in caplog.records if r.getMessage() == "graph call failed"]
    assert (record.graph_code, record.graph_subcode) == (190, 463)  # type: ignore[attr-defined]
    assert record.fbtrace_id == "B1yQm7dLsW0aXcE4tRn2kPo"  # type: ignore[attr-defined]
    assert TOKEN not in caplog.text


async def test_app_usage_at_the_top_holds_every_call_a_minute(
    fake: fakegraph.FakeGraph, clock: VirtualClock
) -> None:
    # X-App-Usage gives no time to wait: at 100% every call of the app waits a minute,
    # whichever page it is about.
    fake.state.history.usage_headers["X-App-Usage"] = json.dumps(
        {"call_count": 100, "total_time": 40, "total_cputime": 35}
    )
    client = make_client(fake, clock, retry_max_wait_s=300)
    api = ConversationsApi(client)
    try:
        await api.conversations("FACEBOOK", PAGE, Secret(TOKEN))
        fake.state.history.usage_headers.clear()
        await api.conversations("FACEBOOK", OTHER, Secret(TOKEN))
        await api.conversations("FACEBOOK", OTHER, Secret(TOKEN))
    finally:
        await client.aclose()
    first, second, third = [
        r["time_ms"] / 1000 for r in fake.state.requests if r["path"].endswith("/conversations")
    ]
    assert second - first >= 60
    assert third - second < 1  # usage back under the top: no more waiting
