"""The page lifecycle through the subscriptions service: confirm, reconcile, import,
Instagram token refresh, disconnect with purge, and what ListPages shows.

Real tokens server and PostgreSQL, the fake Graph API over HTTP, a fake router.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import pytest

from pagewire import fakegraph
from pagewire.proto import events_pb2, subscriptions_pb2, tokens_pb2
from services.subscriptions.reconcile import ReconcileSettings
from tests.integration.test_subscriptions import (
    FACEBOOK_FIELDS,
    FB,
    IG,
    IG_ACCOUNT,
    NEW_TOKEN,
    OTHER_PAGE,
    OTHER_TOKEN,
    PAGE,
    TOKEN,
    Stack,
    VirtualClock,
    build_stack,
    connect_request,
    connection_rows,
    get_page,
    rpc_error,
    token_ref,
)
from tests.support.waiting import wait_for

DAY_MS = 86_400_000
USER_TOKEN = "EAAGuserTOKENwhoMANAGESpages0123456789abc"
THIRD_PAGE = "126374859203746"
IMPORTED = [
    {"id": PAGE, "name": "Acme Shoes", "access_token": TOKEN, "tasks": ["MODERATE"]},
    {"id": OTHER_PAGE, "name": "Acme Diner", "access_token": OTHER_TOKEN, "tasks": ["MODERATE"]},
    {"id": THIRD_PAGE, "name": "Acme Bakery", "access_token": NEW_TOKEN, "tasks": ["MESSAGING"]},
]


@pytest.fixture
async def env(database_url: str):  # type: ignore[no-untyped-def]
    async with build_stack(database_url) as stack:
        yield stack


async def reconcile(env: Stack, **kwargs: object) -> subscriptions_pb2.ReconcileResponse:
    return await env.subs.Reconcile(subscriptions_pb2.ReconcileRequest(**kwargs))


async def token_status(env: Stack, page_id: str = PAGE, platform: int = FB):  # type: ignore[no-untyped-def]
    return await env.tokens.GetTokenStatus(
        tokens_pb2.GetTokenStatusRequest(page=token_ref(page_id, platform))
    )


# --- connect is confirmed ---------------------------------------------------------------------


async def test_connect_is_confirmed_by_get_subscribed_apps(env: Stack) -> None:
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == subscriptions_pb2.SUBSCRIBED
    post, get = [r for r in env.graph.state.requests if "subscribed_apps" in r["path"]]
    assert (post["method"], get["method"]) == ("POST", "GET")
    assert get["bearer_token"] == TOKEN
    assert env.graph.state.pages[PAGE]["subscribed_fields"] == list(FACEBOOK_FIELDS)


async def test_graph_missing_fields_after_post_is_subscribe_failed_then_resubscribe(
    env: Stack,
) -> None:
    # Graph keeps only some fields (an app without those fields in the dashboard).
    env.graph.state.fail(
        method="GET",
        body={"data": [{"id": fakegraph.FAKE_APP_ID, "subscribed_fields": ["messages"]}]},
    )
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == subscriptions_pb2.SUBSCRIBE_FAILED
    assert "fields missing: message_echoes" in page.last_error
    repaired = (
        await env.subs.Resubscribe(subscriptions_pb2.ResubscribeRequest(platform=FB, page_id=PAGE))
    ).page
    assert repaired.status == subscriptions_pb2.SUBSCRIBED and repaired.last_error == ""


async def test_other_apps_on_the_page_do_not_count_as_ours(env: Stack) -> None:
    env.graph.state.fail(
        method="GET",
        body={"data": [{"id": "999", "name": "Other", "subscribed_fields": list(FACEBOOK_FIELDS)}]},
    )
    page = (await env.subs.ConnectPage(connect_request())).page
    assert page.status == subscriptions_pb2.SUBSCRIBE_FAILED
    assert "app not subscribed" in page.last_error


# --- reconcile --------------------------------------------------------------------------------


async def test_reconcile_repairs_a_silently_unsubscribed_page_in_one_run(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    await env.subs.ConnectPage(connect_request(OTHER_PAGE, token=OTHER_TOKEN))
    env.graph.state.unsubscribe(PAGE)  # Meta disabled the webhook and dropped the page
    assert PAGE not in env.graph.state.pages
    env.graph.state.requests.clear()

    result = await reconcile(env)
    assert (result.checked, result.ok, result.repaired, result.failed) == (2, 1, 1, 0)
    by_page = {check.page_id: check for check in result.pages}
    assert by_page[PAGE].outcome == subscriptions_pb2.CHECK_REPAIRED
    assert "app not subscribed" in by_page[PAGE].detail
    assert by_page[OTHER_PAGE].outcome == subscriptions_pb2.CHECK_OK

    assert env.graph.state.pages[PAGE]["subscribed_fields"] == list(FACEBOOK_FIELDS)
    (post,) = env.graph.state.requests_to("POST")
    assert post["path"] == f"/v25.0/{PAGE}/subscribed_apps" and post["bearer_token"] == TOKEN
    page = await get_page(env)
    assert page.status == subscriptions_pb2.SUBSCRIBED
    assert page.repairs == 1 and "app not subscribed" in page.last_repair
    assert page.last_checked_at_ms > 0 and page.last_repair_at_ms == page.last_checked_at_ms

    again = await reconcile(env)
    assert (again.ok, again.repaired) == (2, 0)
    assert (await get_page(env)).repairs == 1


async def test_reconcile_restores_missing_fields(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    env.graph.state.unsubscribe(PAGE, ["message_echoes", "standby"])
    result = await reconcile(env, platform=FB, page_id=PAGE)
    (check,) = result.pages
    assert check.outcome == subscriptions_pb2.CHECK_REPAIRED
    assert "fields missing: message_echoes,standby" in check.detail
    assert env.graph.state.pages[PAGE]["subscribed_fields"] == list(FACEBOOK_FIELDS)


async def test_reconcile_repairs_a_subscribe_failed_page(env: Stack) -> None:
    env.graph.state.fail(method="POST", preset="100")
    assert (
        await env.subs.ConnectPage(connect_request())
    ).page.status == subscriptions_pb2.SUBSCRIBE_FAILED
    result = await reconcile(env)
    assert result.repaired == 1
    page = await get_page(env)
    assert page.status == subscriptions_pb2.SUBSCRIBED and page.last_error == ""


@pytest.mark.parametrize("preset", ["190_460", "190_463"])
async def test_reconcile_marks_reauth_on_a_refused_token(env: Stack, preset: str) -> None:
    await env.subs.ConnectPage(connect_request())
    env.graph.state.fail(method="GET", path_contains="subscribed_apps", preset=preset)
    result = await reconcile(env)
    assert result.reauth_required == 1
    code, subcode = (int(part) for part in preset.split("_"))
    page = await get_page(env)
    assert page.status == subscriptions_pb2.REAUTH_REQUIRED
    assert (page.last_error_code, page.last_error_subcode) == (code, subcode)
    status = await token_status(env)
    assert status.status == tokens_pb2.REAUTH_REQUIRED
    assert (status.graph_code, status.graph_subcode) == (code, subcode)

    # Later runs do not hammer Graph with a dead token.
    env.graph.state.requests.clear()
    skipped = await reconcile(env)
    assert skipped.skipped == 1 and env.graph.state.requests == []

    # Connecting again with a new token restores everything and resubscribes.
    restored = (await env.subs.ConnectPage(connect_request(token=NEW_TOKEN))).page
    assert restored.status == subscriptions_pb2.SUBSCRIBED
    assert (await token_status(env)).status == tokens_pb2.ACTIVE
    assert (await reconcile(env)).ok == 1


async def test_reconcile_marks_reauth_on_code_102_without_subcode_only(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    await env.subs.ConnectPage(connect_request(OTHER_PAGE, token=OTHER_TOKEN))
    env.graph.state.fail(
        method="GET", path_contains=PAGE, error={"code": 102, "message": "Session key invalid"}
    )
    env.graph.state.fail(
        method="GET",
        path_contains=OTHER_PAGE,
        error={"code": 102, "error_subcode": 33, "message": "Session key invalid"},
    )
    await reconcile(env)
    assert (await get_page(env)).status == subscriptions_pb2.REAUTH_REQUIRED
    other = await get_page(env, OTHER_PAGE)
    assert other.status == subscriptions_pb2.SUBSCRIBED and other.last_error_code == 102


async def test_reconcile_never_decides_by_message_text(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    env.graph.state.fail(
        method="GET",
        error={"code": 100, "message": "Error validating access token: session invalidated"},
    )
    await reconcile(env)
    page = await get_page(env)
    assert page.status == subscriptions_pb2.SUBSCRIBED and page.last_error_code == 100
    assert (await token_status(env)).status == tokens_pb2.ACTIVE


async def test_reconcile_does_not_hammer_graph_on_613(database_url: str) -> None:
    clock = VirtualClock()
    async with build_stack(database_url, clock=clock) as env:
        await env.subs.ConnectPage(connect_request())
        env.graph.state.requests.clear()
        env.graph.state.fail(
            method="GET", path_contains="subscribed_apps", preset="613", times=None
        )
        outcomes = []
        for _ in range(12):  # six minutes of runs, every 30 s
            result = await reconcile(env)
            outcomes.append(result.pages[0].outcome)
            clock.now += 30
        stamps = [r["time_ms"] / 1000 for r in env.graph.state.requests_to("GET")]
        # Graph asked for 2 minutes each time: at most one request per 2 minutes.
        assert 2 <= len(stamps) <= 3
        assert all(b - a >= 120 for a, b in zip(stamps, stamps[1:], strict=False))
        assert subscriptions_pb2.CHECK_SKIPPED in outcomes
        page = await get_page(env)
        assert page.status == subscriptions_pb2.SUBSCRIBED  # a rate limit is not a failure
        assert "rate limit" in page.last_error and page.last_error_code == 613


async def test_reconcile_loop_repairs_without_anyone_asking(database_url: str) -> None:
    settings = ReconcileSettings(interval_s=0.05, jitter=0.1)
    async with build_stack(database_url, reconcile=settings) as env:
        await env.subs.ConnectPage(connect_request())
        env.graph.state.unsubscribe(PAGE)
        stop = asyncio.Event()
        loop = asyncio.create_task(env.reconciler.loop(stop))
        try:
            await wait_for(lambda: PAGE in env.graph.state.pages, what="the loop to resubscribe")
            await wait_for(lambda: _repairs(env), what="the repair to be recorded")
        finally:
            stop.set()
            await asyncio.wait_for(loop, 5)


async def _repairs(env: Stack) -> bool:
    return (await get_page(env)).repairs == 1


async def test_two_replicas_check_each_page_once_per_period(database_url: str) -> None:
    async with build_stack(database_url) as env:
        for page_id, token in ((PAGE, TOKEN), (OTHER_PAGE, OTHER_TOKEN)):
            await env.subs.ConnectPage(connect_request(page_id, token=token))
        env.graph.state.requests.clear()
        first, second = await asyncio.gather(env.reconciler.run_due(), env.reconciler.run_due())
        checked = sorted(check.page_id for check in [*first, *second])
        assert checked == sorted([PAGE, OTHER_PAGE])
        assert len(env.graph.state.requests_to("GET")) == 2
        # Within the period nothing is due again.
        assert await env.reconciler.run_due() == []


async def test_reconcile_by_account_and_bad_requests(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request(PAGE, account="acme"))
    await env.subs.ConnectPage(connect_request(OTHER_PAGE, account="globex", token=OTHER_TOKEN))
    result = await reconcile(env, account_id="globex")
    assert [check.page_id for check in result.pages] == [OTHER_PAGE]
    error = await rpc_error(reconcile(env, platform=FB, page_id="126374859203746"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for request, field in (
        ({"page_id": PAGE}, "platform"),
        ({"platform": FB, "page_id": "12a"}, "page_id"),
        ({"platform": 9}, "platform"),
        ({"account_id": "bad account"}, "account_id"),
    ):
        error = await rpc_error(reconcile(env, **request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(f"{field}:")


# --- Instagram Login tokens ----------------------------------------------------------------------


async def connect_instagram(env: Stack, days_left: float) -> None:
    expires = int(time.time() * 1000 + days_left * DAY_MS)
    await env.subs.ConnectPage(
        connect_request(IG_ACCOUNT, platform=IG, token_expires_at_ms=expires)
    )


async def test_instagram_token_near_expiry_is_refreshed_by_one_run(env: Stack) -> None:
    await connect_instagram(env, days_left=5)
    before = await token_status(env, IG_ACCOUNT, IG)
    result = await reconcile(env)
    (check,) = result.pages
    assert check.token_refreshed and check.outcome == subscriptions_pb2.CHECK_OK

    ((old, new),) = env.graph.state.refreshed
    assert old == TOKEN
    (refresh,) = env.graph.state.requests_to("GET", "refresh_access_token")
    assert refresh["bearer_token"] == TOKEN and refresh["query"] == {
        "grant_type": "ig_refresh_token"
    }
    decrypted = await env.tokens.DecryptToken(
        tokens_pb2.DecryptTokenRequest(page=token_ref(IG_ACCOUNT, IG))
    )
    assert decrypted.token == new
    after = await token_status(env, IG_ACCOUNT, IG)
    assert after.status == tokens_pb2.ACTIVE
    expected = time.time() * 1000 + fakegraph.IG_REFRESH_EXPIRES_IN * 1000
    assert abs(after.expires_at_ms - expected) < 60_000
    assert after.expires_at_ms > before.expires_at_ms + 50 * DAY_MS
    # The subscription check after the refresh used the new token.
    (get,) = env.graph.state.requests_to("GET", "subscribed_apps")[-1:]
    assert get["bearer_token"] == new


async def test_instagram_token_far_from_expiry_is_left_alone(env: Stack) -> None:
    await connect_instagram(env, days_left=45)
    result = await reconcile(env)
    assert not result.pages[0].token_refreshed
    assert env.graph.state.requests_to("GET", "refresh_access_token") == []


@pytest.mark.parametrize("failure", [{"preset": "500"}, {"preset": "100"}])
async def test_failed_refresh_near_expiry_marks_reauth_and_says_why(
    env: Stack, failure: dict[str, object]
) -> None:
    await connect_instagram(env, days_left=5)
    env.graph.state.fail(path_contains="refresh_access_token", times=None, **failure)
    result = await reconcile(env)
    assert result.reauth_required == 1
    page = await get_page(env, IG_ACCOUNT, IG)
    assert page.status == subscriptions_pb2.REAUTH_REQUIRED
    assert "could not be refreshed" in page.last_error and "expires on" in page.last_error
    status = await token_status(env, IG_ACCOUNT, IG)
    assert status.status == tokens_pb2.REAUTH_REQUIRED
    assert "could not be refreshed" in status.reason


async def test_refused_refresh_marks_reauth_at_once(env: Stack) -> None:
    await connect_instagram(env, days_left=15)
    env.graph.state.fail(path_contains="refresh_access_token", preset="190_460")
    await reconcile(env)
    status = await token_status(env, IG_ACCOUNT, IG)
    assert status.status == tokens_pb2.REAUTH_REQUIRED
    assert (status.graph_code, status.graph_subcode) == (190, 460)
    assert "refresh refused" in status.reason


async def test_transient_refresh_failure_far_from_expiry_retries_next_run(env: Stack) -> None:
    await connect_instagram(env, days_left=15)
    env.graph.state.fail(path_contains="refresh_access_token", preset="500", times=None)
    result = await reconcile(env)
    assert result.failed == 1
    page = await get_page(env, IG_ACCOUNT, IG)
    assert page.status == subscriptions_pb2.SUBSCRIBED and "retried next run" in page.last_error
    assert (await token_status(env, IG_ACCOUNT, IG)).status == tokens_pb2.ACTIVE
    env.graph.state.failures.clear()
    assert (await reconcile(env)).pages[0].token_refreshed


async def test_expired_instagram_token_is_reauth(env: Stack) -> None:
    await connect_instagram(env, days_left=-1)
    await reconcile(env)
    page = await get_page(env, IG_ACCOUNT, IG)
    assert page.status == subscriptions_pb2.REAUTH_REQUIRED and "expired" in page.last_error
    assert env.graph.state.requests_to("GET", "refresh_access_token") == []


# --- import ----------------------------------------------------------------------------------


async def test_import_three_pages_over_two_result_pages_connects_the_chosen_two(
    env: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env.graph.state.accounts_page_size = 2
    env.graph.state.set_accounts(USER_TOKEN, IMPORTED)
    response = await env.subs.ImportPages(
        subscriptions_pb2.ImportPagesRequest(
            user_token=USER_TOKEN, account_id="acme", page_ids=[PAGE, THIRD_PAGE]
        )
    )
    assert [p.page_id for p in response.available] == [PAGE, OTHER_PAGE, THIRD_PAGE]
    assert [p.page_id for p in response.connected] == [PAGE, THIRD_PAGE]
    assert all(p.status == subscriptions_pb2.SUBSCRIBED for p in response.connected)
    owners = {p.page_id: p.connected_account_id for p in response.available}
    assert owners == {PAGE: "acme", OTHER_PAGE: "", THIRD_PAGE: "acme"}

    listings = env.graph.state.requests_to("GET", "me/accounts")
    assert len(listings) == 2 and {r["bearer_token"] for r in listings} == {USER_TOKEN}
    posts = {
        r["path"].split("/")[2]: r["bearer_token"] for r in env.graph.state.requests_to("POST")
    }
    assert posts == {PAGE: TOKEN, THIRD_PAGE: NEW_TOKEN}  # each page with its own token
    for page_id, token in ((PAGE, TOKEN), (THIRD_PAGE, NEW_TOKEN)):
        decrypted = await env.tokens.DecryptToken(
            tokens_pb2.DecryptTokenRequest(page=token_ref(page_id))
        )
        assert decrypted.token == token
    assert await connection_rows(env.engine) == 2
    assert USER_TOKEN not in caplog.text and TOKEN not in caplog.text


async def test_import_without_a_choice_lists_and_connects_nothing(env: Stack) -> None:
    env.graph.state.set_accounts(USER_TOKEN, IMPORTED)
    response = await env.subs.ImportPages(
        subscriptions_pb2.ImportPagesRequest(user_token=USER_TOKEN, account_id="acme")
    )
    assert len(response.available) == 3 and list(response.connected) == []
    assert await connection_rows(env.engine) == 0


async def test_import_all(env: Stack) -> None:
    env.graph.state.set_accounts(USER_TOKEN, IMPORTED)
    response = await env.subs.ImportPages(
        subscriptions_pb2.ImportPagesRequest(user_token=USER_TOKEN, account_id="acme", all=True)
    )
    assert len(response.connected) == 3 and await connection_rows(env.engine) == 3


async def test_import_of_a_page_owned_elsewhere_changes_nothing(env: Stack) -> None:
    env.graph.state.set_accounts(USER_TOKEN, IMPORTED)
    await env.subs.ConnectPage(connect_request(THIRD_PAGE, account="globex", token="EAAGold1"))
    env.graph.state.requests.clear()
    error = await rpc_error(
        env.subs.ImportPages(
            subscriptions_pb2.ImportPagesRequest(
                user_token=USER_TOKEN, account_id="acme", page_ids=[PAGE, THIRD_PAGE]
            )
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert THIRD_PAGE in error.details() and "globex" in error.details()
    assert env.graph.state.requests_to("POST") == []
    assert await connection_rows(env.engine) == 1
    moved = await env.subs.ImportPages(
        subscriptions_pb2.ImportPagesRequest(
            user_token=USER_TOKEN, account_id="acme", page_ids=[THIRD_PAGE], move=True
        )
    )
    assert moved.connected[0].account_id == "acme"


async def test_import_refused_user_token_is_invalid_argument(env: Stack) -> None:
    env.graph.state.fail(path_contains="me/accounts", preset="190_463")
    error = await rpc_error(
        env.subs.ImportPages(
            subscriptions_pb2.ImportPagesRequest(user_token=USER_TOKEN, account_id="acme", all=True)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("user_token:") and USER_TOKEN not in error.details()


BAD_IMPORTS = [
    ({"user_token": "", "account_id": "acme", "all": True}, "user_token"),
    ({"user_token": "a b", "account_id": "acme", "all": True}, "user_token"),
    ({"user_token": USER_TOKEN, "account_id": "", "all": True}, "account_id"),
    ({"user_token": USER_TOKEN, "account_id": "acme", "page_ids": ["12a"]}, "page_ids[0]"),
    ({"user_token": USER_TOKEN, "account_id": "acme", "page_ids": [PAGE, ""]}, "page_ids[1]"),
    ({"user_token": USER_TOKEN, "account_id": "acme", "page_ids": [PAGE], "all": True}, "page_ids"),
    (
        {"user_token": USER_TOKEN, "account_id": "acme", "page_ids": ["999"]},
        "page_ids[0]",
    ),  # not among the user's Pages: checked after listing, before anything is stored
    (
        {
            "user_token": USER_TOKEN,
            "account_id": "acme",
            "all": True,
            "subscribed_fields": ["Bad!"],
        },
        "subscribed_fields[0]",
    ),
]


@pytest.mark.parametrize(("request_", "field"), BAD_IMPORTS)
async def test_bad_import_is_invalid_argument_and_stores_nothing(
    env: Stack, request_: dict[str, object], field: str
) -> None:
    env.graph.state.set_accounts(USER_TOKEN, IMPORTED)
    error = await rpc_error(env.subs.ImportPages(subscriptions_pb2.ImportPagesRequest(**request_)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")
    assert USER_TOKEN not in error.details()
    assert await connection_rows(env.engine) == 0
    assert env.graph.state.requests_to("POST") == []


# --- disconnect with purge -------------------------------------------------------------------


async def test_disconnect_keeps_stored_data_unless_purge(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    await env.subs.ConnectPage(connect_request(OTHER_PAGE, token=OTHER_TOKEN))
    kept = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=OTHER_PAGE)
    )
    assert kept.unsubscribed and not kept.purged and env.router.purges == []

    purged = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE, purge=True)
    )
    assert purged.unsubscribed and purged.purged and purged.purge_error == ""
    assert (purged.purged_conversations, purged.purged_messages, purged.purged_parked) == (2, 5, 1)
    assert env.router.purges == [(FB, PAGE)]
    deletes = env.graph.state.requests_to("DELETE", PAGE)
    assert len(deletes) == 1 and deletes[0]["bearer_token"] == TOKEN


async def test_failed_purge_is_reported_and_can_be_retried(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    env.router.fail = True
    first = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE, purge=True)
    )
    assert first.unsubscribed and not first.purged and "router" in first.purge_error
    assert await connection_rows(env.engine) == 0
    env.router.fail = False
    retried = await env.subs.DisconnectPage(
        subscriptions_pb2.DisconnectPageRequest(platform=FB, page_id=PAGE, purge=True)
    )
    assert retried.purged and env.router.purges == [(FB, PAGE)]
    assert len(env.graph.state.requests_to("DELETE")) == 1


# --- what ListPages shows ----------------------------------------------------------------------


async def test_list_pages_with_details(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    await connect_instagram(env, days_left=40)
    env.router.activity = {"last_event_ms": 1778163045000, "conversations": 1, "messages": 2}
    env.graph.state.unsubscribe(PAGE)
    await reconcile(env)
    env.graph.state.fail(method="GET", path_contains=IG_ACCOUNT, preset="190_460")
    await reconcile(env, platform=IG, page_id=IG_ACCOUNT)

    plain = (await env.subs.ListPages(subscriptions_pb2.ListPagesRequest())).pages
    assert not plain[0].HasField("token") and not plain[0].HasField("activity")

    pages = (await env.subs.ListPages(subscriptions_pb2.ListPagesRequest(with_details=True))).pages
    facebook, instagram = pages
    assert facebook.platform == FB and facebook.repairs == 1 and facebook.last_checked_at_ms
    assert facebook.token.state == subscriptions_pb2.TOKEN_ACTIVE
    assert facebook.activity.known and facebook.activity.last_event_ms == 1778163045000
    assert facebook.activity.messages == 2
    assert instagram.status == subscriptions_pb2.REAUTH_REQUIRED
    assert instagram.token.state == subscriptions_pb2.TOKEN_REAUTH_REQUIRED
    assert instagram.token.expires_at_ms > 0 and instagram.token.graph_code == 190
    assert list(facebook.subscribed_fields) == list(FACEBOOK_FIELDS)

    one = await env.subs.GetPage(
        subscriptions_pb2.GetPageRequest(platform=FB, page_id=PAGE, with_details=True)
    )
    assert one.page.token.state == subscriptions_pb2.TOKEN_ACTIVE


async def test_list_pages_when_peers_are_down_says_unknown(env: Stack) -> None:
    await env.subs.ConnectPage(connect_request())
    await env.tokens.DeleteToken(tokens_pb2.DeleteTokenRequest(page=token_ref()))
    env.router.fail = True
    (page,) = (
        await env.subs.ListPages(subscriptions_pb2.ListPagesRequest(with_details=True))
    ).pages
    assert page.token.state == subscriptions_pb2.TOKEN_MISSING
    assert not page.activity.known
    assert page.platform == events_pb2.FACEBOOK
