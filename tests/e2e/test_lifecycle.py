"""The page lifecycle through real processes and the `pagewire` command, as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

from pagewire import fakegraph
from tests.e2e.conftest import PAGE_TOKENS, applied, cli, connect, query
from tests.support.stack import Stack
from tests.support.waiting import wait_for

PAGE = "109384756201938"
DINER = "117465829304716"
BAKERY = "126374859203746"
USER_TOKEN = "EAAGe2eUSERtokenWHOmanagesTHREEpages000000001"
FIXTURE_PAGE_TOKENS = [page["access_token"] for page in fakegraph.DEFAULT_ACCOUNTS]


async def pages_json(stack: Stack) -> dict[str, dict]:  # type: ignore[type-arg]
    listed = json.loads((await cli(stack, "pages", "list", "--json")).stdout)
    return {page["page_id"]: page for page in listed}


async def test_reconcile_repairs_and_list_shows_it(
    stack: Stack, graph: fakegraph.FakeGraph, fixtures_dir: Path
) -> None:
    await connect(stack, PAGE)
    await connect(stack, DINER)
    sent = await cli(stack, "webhook", "send", str(fixtures_dir / "meta" / "01_text_message.json"))
    assert sent.stdout.startswith("200")
    graph.state.unsubscribe(PAGE)  # Meta disabled the webhook and dropped the page

    report = (await cli(stack, "pages", "reconcile")).stdout
    assert "REPAIRED" in report and "app not subscribed" in report
    assert "checked 2: 1 ok, 1 repaired" in report
    assert PAGE in graph.state.pages

    table = (await cli(stack, "pages", "list")).stdout
    header, *rows = table.splitlines()
    assert header.split() == [
        "PLATFORM", "PAGE", "ACCOUNT", "STATUS", "FIELDS", "TOKEN", "LAST", "CHECK",
        "REPAIRS", "LAST", "EVENT", "HISTORY", "LAST", "ERROR",
    ]  # fmt: skip
    (shoes,) = [row for row in rows if PAGE in row]
    assert "SUBSCRIBED" in shoes and "active" in shoes and "2026-05-07T" in shoes

    pages = await pages_json(stack)
    assert pages[PAGE]["repairs"] == 1 and "app not subscribed" in pages[PAGE]["last_repair"]
    assert pages[PAGE]["token"]["state"] == "TOKEN_ACTIVE"
    assert pages[PAGE]["activity"]["known"]
    assert pages[PAGE]["activity"]["last_event_ms"] == 1778163045000
    assert pages[PAGE]["last_checked_at_ms"] > 0
    assert pages[DINER]["repairs"] == 0 and pages[DINER]["activity"]["last_event_ms"] == 0


async def test_reauth_on_a_password_change_and_reconnect(
    stack: Stack, graph: fakegraph.FakeGraph
) -> None:
    await connect(stack, PAGE)
    graph.state.fail(method="GET", path_contains="subscribed_apps", preset="190_460")
    report = await cli(stack, "pages", "reconcile", "--platform", "facebook", "--page-id", PAGE)
    assert "REAUTH_REQUIRED" in report.stdout
    page = (await pages_json(stack))[PAGE]
    assert page["status"] == "REAUTH_REQUIRED"
    assert page["token"]["state"] == "TOKEN_REAUTH_REQUIRED"
    assert (page["token"]["graph_code"], page["token"]["graph_subcode"]) == (190, 460)
    # Connecting again with a (new) token restores it.
    assert (await connect(stack, PAGE))["page"]["status"] == "SUBSCRIBED"
    assert (await pages_json(stack))[PAGE]["token"]["state"] == "TOKEN_ACTIVE"


async def test_import_connects_the_chosen_pages(stack: Stack, graph: fakegraph.FakeGraph) -> None:
    graph.state.accounts_page_size = 2  # three Pages over two result pages
    token_file = stack.workdir / "user.token"
    token_file.write_text(USER_TOKEN + "\n")
    result = await cli(
        stack,
        "pages", "import", "--user-token-file", str(token_file), "--account", "acme",
        "--page-id", PAGE, "--page-id", BAKERY,
    )  # fmt: skip
    assert "Acme Diner" in result.stdout and "Acme Bakery" in result.stdout
    pages = await pages_json(stack)
    assert set(pages) == {PAGE, BAKERY}
    assert {r["bearer_token"] for r in graph.state.requests_to("GET", "me/accounts")} == {
        USER_TOKEN
    }
    posts = {r["path"].split("/")[2]: r["bearer_token"] for r in graph.state.requests_to("POST")}
    assert posts == {PAGE: FIXTURE_PAGE_TOKENS[0], BAKERY: FIXTURE_PAGE_TOKENS[2]}
    logs = stack.logs()
    assert USER_TOKEN not in logs
    assert not [token for token in FIXTURE_PAGE_TOKENS if token in logs]


async def test_disconnect_with_purge(
    stack: Stack, graph: fakegraph.FakeGraph, fixtures_dir: Path
) -> None:
    await connect(stack, PAGE)
    await cli(stack, "webhook", "send", str(fixtures_dir / "meta" / "01_text_message.json"))
    assert json.loads((await cli(stack, "messages", "list", "--page-id", PAGE, "--json")).stdout)

    out = await cli(stack, "pages", "disconnect", "--platform", "facebook", "--page-id", PAGE)
    assert "disconnected and unsubscribed" in out.stdout and "purged" not in out.stdout
    kept = json.loads((await cli(stack, "messages", "list", "--page-id", PAGE, "--json")).stdout)
    assert len(kept) == 1  # stored data is kept without --purge

    purged = await cli(
        stack, "pages", "disconnect", "--platform", "facebook", "--page-id", PAGE, "--purge"
    )
    assert "purged 1 conversation(s), 1 message(s)" in purged.stdout
    gone = json.loads((await cli(stack, "messages", "list", "--page-id", PAGE, "--json")).stdout)
    assert gone == []
    (delete,) = graph.state.requests_to("DELETE")
    assert delete["bearer_token"] == PAGE_TOKENS[PAGE]


async def test_a_disconnected_page_has_new_events_parked_until_connected_again(
    stack: Stack, database_url: str, fixtures_dir: Path
) -> None:
    """Without --purge, what was stored stays, and what arrives for the page afterwards is
    kept in the log, not applied into the account it left, until it is connected again."""
    await connect(stack, PAGE)
    await cli(stack, "webhook", "send", str(fixtures_dir / "meta" / "01_text_message.json"))
    await cli(stack, "pages", "disconnect", "--platform", "facebook", "--page-id", PAGE)
    later = fixtures_dir / "meta" / "09_attachment_image_and_sticker.json"
    await cli(stack, "webhook", "send", str(later))
    await applied(database_url)
    by_state = dict(
        query(
            database_url,
            "SELECT state, count(*) FROM router.events WHERE page_id = %s GROUP BY state",
            PAGE,
        )
    )
    assert by_state == {"applied": 1, "parked": 2}  # the image and the sticker
    await connect(stack, PAGE)
    await applied(database_url)
    listed = json.loads((await cli(stack, "messages", "list", "--page-id", PAGE, "--json")).stdout)
    assert len(listed) == 3


async def test_bad_input_gets_a_clear_error_and_stores_nothing(
    stack: Stack, graph: fakegraph.FakeGraph
) -> None:
    empty = stack.workdir / "empty.token"
    empty.write_text("\n")
    good = stack.workdir / "good.token"
    good.write_text(PAGE_TOKENS[PAGE])
    common = ["--account", "acme", "--token-file"]
    cases = [
        (["pages", "connect", "--platform", "facebook", "--page-id", PAGE, *common, str(empty)],
         2, "is empty"),
        (["pages", "connect", "--platform", "myspace", "--page-id", PAGE, *common, str(good)],
         2, "invalid choice: 'myspace'"),
        (["pages", "connect", "--platform", "facebook", "--page-id", "acme-shoes", *common,
          str(good)], 1, "INVALID_ARGUMENT: page_id: must be 1 to 32 digits"),
        (["pages", "import", "--user-token-file", str(empty), "--account", "acme", "--all"],
         2, "--user-token-file"),
        (["pages", "import", "--user-token-file", str(good), "--account", "acme",
          "--page-id", "shoes"], 2, "is not a page id"),
        (["pages", "reconcile", "--page-id", PAGE], 2, "--page-id needs --platform"),
    ]  # fmt: skip
    for args, code, message in cases:
        result = await cli(stack, *args, check=False)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert json.loads((await cli(stack, "pages", "list", "--json")).stdout) == []
    assert graph.state.requests == []


async def test_the_loop_repairs_on_its_own(stack: Stack, graph: fakegraph.FakeGraph) -> None:
    await stack.stop("subscriptions")
    await stack.start("subscriptions", PAGEWIRE_RECONCILE_INTERVAL_S="0.3")
    await connect(stack, PAGE)
    graph.state.unsubscribe(PAGE)
    await wait_for(lambda: PAGE in graph.state.pages, timeout=20, what="the loop to resubscribe")

    async def repaired() -> bool:
        return (await pages_json(stack))[PAGE]["repairs"] >= 1

    await wait_for(repaired, timeout=20, what="the repair to be recorded")
