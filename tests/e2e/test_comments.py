"""Comments through real processes: every comment, reaction and mention webhook signed and
posted to the gateway, twice, in order, reversed and shuffled, onto three copies of the
Pages; each copy ends in the same stored threads, with every comment once."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx

from tests.e2e.conftest import applied, cli, query, sign
from tests.support.stack import Stack

FACEBOOK_PAGE = "109384756201938"
INSTAGRAM_ACCOUNT = "17841405822304914"
# Three copies of each: the fixtures' own ids, and two more written into the same bodies.
COPIES = [
    (FACEBOOK_PAGE, INSTAGRAM_ACCOUNT),
    ("130000000000001", "17841400000000001"),
    ("130000000000002", "17841400000000002"),
]


def tokens() -> dict[str, str]:
    return {
        page: f"EAAGcommentCopy{n}{i}Token00000000000000000000000"
        for n, pages in enumerate(COPIES)
        for i, page in enumerate(pages)
    }


def bodies(comment_fixtures_dir: Path, copy: tuple[str, str]) -> list[bytes]:
    out = []
    for path in sorted(comment_fixtures_dir.glob("*.json")):
        text = path.read_text()
        text = text.replace(FACEBOOK_PAGE, copy[0]).replace(INSTAGRAM_ACCOUNT, copy[1])
        out.append(text.encode())
    return out


async def post(client: httpx.AsyncClient, body: bytes) -> None:
    platform = "instagram" if json.loads(body)["object"] == "instagram" else "facebook"
    answer = await client.post(
        f"/webhooks/{platform}", content=body, headers={"X-Hub-Signature-256": sign(body)}
    )
    assert answer.status_code == 200, answer.text


async def connect(stack: Stack, page_id: str, platform: str, token: str) -> None:
    token_file = stack.workdir / f"{page_id}.token"
    token_file.write_text(token + "\n")
    await cli(
        stack,
        "pages",
        "connect",
        "--platform",
        platform,
        "--page-id",
        page_id,
        "--account",
        "acme",
        "--token-file",
        str(token_file),
    )


async def stored(stack: Stack, page_id: str, platform: str, canonical: str) -> tuple[list, list]:  # type: ignore[type-arg]
    """The page's comments as `comments list` prints them, with the copy's ids written
    back to the fixtures' and the router's own row ids left out."""
    out = await cli(
        stack, "comments", "list", "--platform", platform, "--page-id", page_id, "--json"
    )
    listed = json.loads(out.stdout.replace(page_id, canonical))
    for comment in listed.get("comments", []):
        comment.pop("id")
        comment.pop("thread_id")
    for thread in listed.get("threads", []):
        thread.pop("id")
    return (
        sorted(listed.get("comments", []), key=lambda c: c["comment_id"]),
        sorted(listed.get("threads", []), key=lambda t: t["post_id"]),
    )


def differences(one: tuple, other: tuple) -> list[dict]:  # type: ignore[type-arg]
    """The fields that differ, row by row, for the assertion's message."""
    out = []
    for rows, others in zip(one, other, strict=True):
        for a, b in zip(rows, others, strict=False):
            if a != b:
                out.append({k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
    return out


async def test_every_comment_fixture_twice_in_any_order_stores_the_same_threads(
    stack: Stack, comment_fixtures_dir: Path, database_url: str
) -> None:
    page_tokens = tokens()
    for facebook, instagram in COPIES:
        await connect(stack, facebook, "facebook", page_tokens[facebook])
        await connect(stack, instagram, "instagram", page_tokens[instagram])
    orders = []
    in_order = bodies(comment_fixtures_dir, COPIES[0])
    orders.append(in_order + in_order)
    reversed_ = list(reversed(bodies(comment_fixtures_dir, COPIES[1])))
    orders.append([body for body in reversed_ for _ in (0, 1)])
    shuffled = bodies(comment_fixtures_dir, COPIES[2]) * 2
    random.Random(20261202).shuffle(shuffled)
    orders.append(shuffled)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        for order in orders:
            for body in order:
                await post(client, body)
    await applied(database_url)

    views = []
    for facebook, instagram in COPIES:
        views.append(
            (
                *await stored(stack, facebook, "facebook", FACEBOOK_PAGE),
                *await stored(stack, instagram, "instagram", INSTAGRAM_ACCOUNT),
            )
        )
    facebook_comments, facebook_threads, instagram_comments, _ = views[0]
    # Every comment once, whatever was delivered twice.
    ids = [c["comment_id"] for c in facebook_comments + instagram_comments]
    assert len(ids) == len(set(ids))
    assert len(facebook_comments) >= 3 and len(instagram_comments) >= 4
    assert any(c["removed"] for c in facebook_comments)
    assert facebook_threads  # reactions added then removed: counted to none
    for n, order in ((1, "reversed"), (2, "shuffled")):
        assert views[n] == views[0], (
            f"{order} delivery stored something else: {differences(views[0], views[n])}"
        )
    # Nothing failed, nothing was left unapplied.
    by_state = dict(query(database_url, "SELECT state, count(*) FROM router.events GROUP BY 1"))
    assert set(by_state) <= {"applied"}, by_state
    logs = stack.logs()
    assert not [page for page, token in page_tokens.items() if token in logs]
