"""Signed webhook bodies for the benchmark: Meta's own fixtures, replayed with fresh ids.

Each body is one fixture from ../shared/fixtures/meta with every page, user,
mid and timestamp replaced, so nothing is a duplicate and references stay
meaningful: a delivery or read names the conversation's last echo, a reaction
and an edit aim at a message that was sent before. The mix is weighted the way
an inbox sees traffic: mostly single messages, echoes and receipts, a few
batches of several items across pages.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("PAGEWIRE_FIXTURES", REPO.parent / "shared" / "fixtures")) / "meta"

# Fixture → weight in the mix (percent of bodies).
MIX: dict[str, int] = {
    "01_text_message.json": 24,
    "02_batch_two_pages_two_messages.json": 4,
    "03_echo_from_our_app.json": 10,
    "04_echo_page_inbox_no_app_id.json": 3,
    "05_delivery.json": 10,
    "06_read.json": 12,
    "07_postback.json": 4,
    "08_reaction_react_unreact.json": 3,
    "09_attachment_image_and_sticker.json": 3,
    "10_quick_reply.json": 4,
    "11_standby_message.json": 2,
    "12_instagram_text.json": 10,
    "13_instagram_echo.json": 5,
    "14_message_edit.json": 3,
    "17_referral_mme.json": 3,
}

# Pages the benchmark connects: the fixtures' own, plus fresh ones, over two accounts.
FACEBOOK_PAGES = {
    "109384756201938": "acme",
    "117465829304716": "acme",
    "100000000000101": "globex",
    "100000000000102": "globex",
}
INSTAGRAM_PAGES = {"17841405822304914": "acme", "17841400000000201": "globex"}
_FIXTURE_PAGES = {"109384756201938", "117465829304716", "17841405822304914"}


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Body:
    """One signed POST: its path, exact bytes, signature and how many events it carries."""

    path: str
    data: bytes
    signature: str
    events: int


@dataclass
class _Conversation:
    page: str
    user: str
    clock: int
    inbound: list[str] = field(default_factory=list)
    outbound: list[tuple[str, int]] = field(default_factory=list)
    edits: dict[str, int] = field(default_factory=dict)


def load_fixtures(directory: Path = FIXTURES) -> dict[str, dict[str, Any]]:
    """The fixtures of the mix, parsed; fails naming the directory when they are missing."""
    missing = [name for name in MIX if not (directory / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"webhook fixtures not found in {directory} ({', '.join(missing)});"
            " set PAGEWIRE_FIXTURES"
        )
    return {name: json.loads((directory / name).read_bytes()) for name in MIX}


class Generator:
    """Bodies with fresh ids over a pool of conversations per page."""

    def __init__(
        self,
        secret: str,
        *,
        seed: int = 1,
        users_per_page: int = 250,
        start_ms: int = 1_780_000_000_000,
        fixtures: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._secret = secret
        self._rng = random.Random(seed)
        self._fixtures = fixtures or load_fixtures()
        self._users_per_page = users_per_page
        self._start_ms = start_ms
        self._conversations: dict[tuple[str, int], _Conversation] = {}
        self._names = list(MIX)
        self._weights = [MIX[n] for n in self._names]

    # -- ids ------------------------------------------------------------------------------

    def _digits(self, n: int) -> str:
        return str(self._rng.randint(1, 9)) + "".join(self._rng.choices(string.digits, k=n - 1))

    def _mid(self, instagram: bool) -> str:
        alphabet = string.ascii_letters + string.digits + "-_"
        if instagram:
            return "aWdf" + "".join(self._rng.choices(string.ascii_letters + string.digits, k=150))
        return "m_" + "".join(self._rng.choices(alphabet, k=86))

    def _conversation(self, page: str) -> _Conversation:
        slot = self._rng.randrange(self._users_per_page)
        key = (page, slot)
        conv = self._conversations.get(key)
        if conv is None:
            clock = self._start_ms + self._rng.randrange(3_600_000)
            conv = _Conversation(page, self._digits(16), clock)
            self._conversations[key] = conv
        conv.clock += self._rng.randint(200, 4000)
        return conv

    # -- bodies ---------------------------------------------------------------------------

    def body(self, name: str | None = None) -> Body:
        """One body from fixture `name` (default: drawn from the mix)."""
        name = name or self._rng.choices(self._names, self._weights)[0]
        envelope = copy.deepcopy(self._fixtures[name])
        instagram = envelope.get("object") == "instagram"
        pool = list(INSTAGRAM_PAGES if instagram else FACEBOOK_PAGES)
        pages: dict[str, str] = {}
        users: dict[tuple[str, str], _Conversation] = {}
        events = 0
        for entry in envelope["entry"]:
            fixture_page = str(entry["id"])
            if fixture_page not in pages:
                free = [p for p in pool if p not in pages.values()] or pool
                pages[fixture_page] = self._rng.choice(free)
            page = pages[fixture_page]
            entry["id"] = page
            latest = 0
            for key in ("messaging", "standby"):
                for item in entry.get(key, []):
                    sender, recipient = str(item["sender"]["id"]), str(item["recipient"]["id"])
                    echo = sender in _FIXTURE_PAGES
                    fixture_user = recipient if echo else sender
                    conv = users.get((fixture_page, fixture_user))
                    if conv is None:
                        conv = users[(fixture_page, fixture_user)] = self._conversation(page)
                    self._rewrite(item, conv, echo, instagram)
                    latest = max(latest, item["timestamp"])
                    events += 1
            entry["time"] = latest + self._rng.randint(20, 600)
        data = json.dumps(envelope, separators=(",", ":")).encode()
        path = "/webhooks/instagram" if instagram else "/webhooks/facebook"
        return Body(path, data, sign(data, self._secret), events)

    def _rewrite(
        self, item: dict[str, Any], conv: _Conversation, echo: bool, instagram: bool
    ) -> None:
        """Points a fixture item at `conv`, with a fresh mid and a timestamp of its own."""
        ts = conv.clock
        conv.clock += 1
        item["sender"]["id"] = conv.page if echo else conv.user
        item["recipient"]["id"] = conv.user if echo else conv.page
        item["timestamp"] = ts
        if "message" in item:
            mid = self._mid(instagram)
            item["message"]["mid"] = mid
            if echo:
                conv.outbound.append((mid, ts))
            else:
                conv.inbound.append(mid)
        elif "postback" in item:
            item["postback"]["mid"] = self._mid(instagram)
        elif "delivery" in item:
            if conv.outbound:
                item["delivery"]["mids"] = [conv.outbound[-1][0]]
                item["delivery"]["watermark"] = conv.outbound[-1][1]
            else:
                item["delivery"]["mids"] = [self._mid(instagram)]
                item["delivery"]["watermark"] = ts - 1
        elif "read" in item:
            item["read"]["watermark"] = conv.outbound[-1][1] if conv.outbound else ts - 1
        elif "reaction" in item:
            target = (conv.inbound or [m for m, _ in conv.outbound] or [self._mid(instagram)])[-1]
            item["reaction"]["mid"] = target
        elif "message_edit" in item:
            target = conv.inbound[-1] if conv.inbound else self._mid(instagram)
            conv.edits[target] = conv.edits.get(target, 0) + 1
            item["message_edit"]["mid"] = target
            item["message_edit"]["num_edit"] = conv.edits[target]

    def bodies(self, count: int) -> list[Body]:
        return [self.body() for _ in range(count)]


def burst(
    secret: str, *, page: str, user: str, events: int, posts: int, seed: int, start_ms: int
) -> tuple[list[Body], list[tuple[int, str]]]:
    """`events` text messages into one conversation, split over `posts` bodies, timestamps
    shuffled across and within the bodies; returns the bodies and the (timestamp, mid)
    order a reader must see."""
    rng = random.Random(seed)
    items = []
    for i in range(events):
        ts = start_ms + i * 10 + rng.randint(0, 9)
        mid = f"m_burst_{user}_{i:04d}"
        items.append(
            {
                "sender": {"id": user},
                "recipient": {"id": page},
                "timestamp": ts,
                "message": {"mid": mid, "text": f"burst message {i}"},
            }
        )
    expected = sorted((item["timestamp"], item["message"]["mid"]) for item in items)
    rng.shuffle(items)
    out = []
    for p in range(posts):
        chunk = items[p::posts]
        envelope = {
            "object": "page",
            "entry": [
                {"id": page, "time": max(i["timestamp"] for i in chunk) + 1, "messaging": chunk}
            ],
        }
        data = json.dumps(envelope, separators=(",", ":")).encode()
        out.append(Body("/webhooks/facebook", data, sign(data, secret), len(chunk)))
    return out, expected
