"""Conversations to deliver, and a sender that delivers them the way Meta does.

A `Workload` is a set of scripted conversations (messages, echoes, edits,
reactions, deliveries, reads) in Meta's item shapes. `chaos_posts` is how Meta
delivers them on a bad day: every conversation shuffled, 10% of items sent
twice, items of different conversations batched into one POST.
`reference_posts` is the same conversations for other users, one item per
POST in timestamp order: the in-order delivery the chaos run must end equal to.

`MetaSender` retries every POST that gets no 200 (an error status, a reset or
refused connection, a timeout) with exponential backoff, rotating over the
gateways, and checks at each 200 that the POST's events are already readable
in PostgreSQL (no ACK before commit).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from bench.bodies import sign
from services.gateway.normalize import normalize_envelope, parse_envelope

APP_ID = 1094728365019283
PAGES = {"109384756201938": "acme", "117465829304716": "globex"}
BASE_MS = 1_785_000_000_000


@dataclass
class Conversation:
    page: str
    user: str
    items: list[dict[str, Any]]  # Meta `messaging` items, in timestamp order

    @property
    def messages(self) -> int:
        return sum(1 for item in self.items if "message" in item)


def _script(page: str, user: str, rng: random.Random, size: int) -> list[dict[str, Any]]:
    """A conversation as Meta items; every mid carries the user id (so states compare
    across users once the id is factored out)."""
    t = BASE_MS + rng.randrange(10**6)
    out: list[dict[str, Any]] = []
    inbound: list[tuple[str, int]] = []
    outbound: list[tuple[str, int]] = []

    def item(ts: int, echo: bool, **content: Any) -> dict[str, Any]:
        sender, recipient = (page, user) if echo else (user, page)
        return {
            "sender": {"id": sender},
            "recipient": {"id": recipient},
            "timestamp": ts,
            **content,
        }

    for k in range(size):
        t += rng.choice([0, 400, 1000])  # equal timestamps happen
        if k and rng.random() < 0.35:
            mid = f"m_{user}_o{k}"
            message = {"mid": mid, "is_echo": True, "app_id": APP_ID, "text": f"reply {k}"}
            out.append(item(t, True, message=message))
            outbound.append((mid, t))
        else:
            mid = f"m_{user}_i{k}"
            out.append(item(t, False, message={"mid": mid, "text": f"question {k}"}))
            inbound.append((mid, t))
    for mid, ts in inbound:
        if rng.random() < 0.4:
            for n in range(1, rng.randint(1, 2) + 1):
                edit = {"mid": mid, "text": f"{mid[-3:]} edited {n}", "num_edit": n}
                out.append(item(ts + 100 * n, False, message_edit=edit))
    for mid, ts in inbound + outbound:
        if rng.random() < 0.3:
            reaction = {"reaction": "love", "emoji": "\u2764\ufe0f", "action": "react", "mid": mid}
            out.append(item(ts + 50, False, reaction=reaction))
            if rng.random() < 0.3:
                out.append(item(ts + 70, False, reaction={"action": "unreact", "mid": mid}))
    if outbound:
        mid, ts = rng.choice(outbound)
        out.append(item(ts + 10, False, delivery={"mids": [mid], "watermark": ts}))
        out.append(item(ts + 20, False, read={"watermark": ts}))
    out.sort(key=lambda i: i["timestamp"])  # stable: equal timestamps keep script order
    return out


def envelope(items: list[dict[str, Any]]) -> bytes:
    """One webhook body: an entry per page, items in the given order."""
    entries: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        page = it["recipient"]["id"] if it["recipient"]["id"] in PAGES else it["sender"]["id"]
        entries.setdefault(page, []).append(it)
    body = {
        "object": "page",
        "entry": [
            {"id": page, "time": max(i["timestamp"] for i in its) + 5, "messaging": its}
            for page, its in entries.items()
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def event_ids(body: bytes) -> list[tuple[str, str]]:
    """(page id, event id) of every event the gateway makes of `body` (its own code)."""
    return [(e.page_id, e.id) for e in normalize_envelope(parse_envelope(body))]


@dataclass
class Workload:
    """Conversations for one scenario, and their in-order twins for the comparison."""

    conversations: list[Conversation]
    references: list[Conversation]

    @classmethod
    def build(cls, tag: int, count: int, size: tuple[int, int], seed: int) -> Workload:
        rng = random.Random(seed)
        pages = list(PAGES)
        conversations, references = [], []
        for n in range(count):
            page = pages[n % len(pages)]
            # Same script for both users: the rng is forked per conversation.
            script_seed = rng.randrange(2**32)
            length = rng.randint(*size)
            user = f"7{tag:02d}{seed % 1000:03d}{n:06d}0"
            twin = f"8{tag:02d}{seed % 1000:03d}{n:06d}0"
            conversations.append(
                Conversation(page, user, _script(page, user, random.Random(script_seed), length))
            )
            references.append(
                Conversation(page, twin, _script(page, twin, random.Random(script_seed), length))
            )
        return cls(conversations, references)

    def chaos_posts(self, seed: int, duplicates: float = 0.10) -> list[bytes]:
        """Shuffled within each conversation, 10% sent twice, interleaved, 1–3 items a POST."""
        rng = random.Random(seed)
        queues = []
        for conv in self.conversations:
            items = list(conv.items)
            items += [it for it in conv.items if rng.random() < duplicates]
            rng.shuffle(items)
            queues.append(items)
        stream: list[dict[str, Any]] = []
        while any(queues):
            queue = rng.choice([q for q in queues if q])
            stream.append(queue.pop())
        posts, i = [], 0
        while i < len(stream):
            size = rng.choice([1, 1, 1, 2, 3])
            posts.append(envelope(stream[i : i + size]))
            i += size
        return posts

    def reference_posts(self) -> list[list[bytes]]:
        """Per reference conversation, its items one per POST, in order."""
        return [[envelope([it]) for it in conv.items] for conv in self.references]

    @property
    def events(self) -> int:
        return sum(len(c.items) for c in self.conversations)


@dataclass
class SendReport:
    posts: int = 0
    acked: int = 0
    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    unacked: int = 0
    acked_not_committed: list[str] = field(default_factory=list)
    checked_at_ack: int = 0
    checked_later: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "acked": self.acked,
            "attempts": self.attempts,
            "retries": self.attempts - self.posts,
            "outcomes": dict(sorted(self.outcomes.items())),
            "unacked": self.unacked,
            "acked_not_committed": len(self.acked_not_committed),
            "ack_checks_immediate": self.checked_at_ack,
            "ack_checks_deferred": self.checked_later,
            "seconds": round(self.seconds, 2),
        }


class MetaSender:
    """Delivers POSTs like Meta: concurrently, retrying every non-200 with backoff."""

    def __init__(
        self,
        gateways: list[str],
        secret: str,
        database_url: str,
        *,
        concurrency: int = 8,
        deadline_s: float = 240.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.gateways = gateways
        self.secret = secret
        self.database_url = database_url
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.timeout_s = timeout_s
        self.report = SendReport()
        self._progress = asyncio.Condition()

    async def progress(self, fraction: float) -> None:
        """Returns once `fraction` of the POSTs were acknowledged (a fault's trigger)."""
        async with self._progress:
            await self._progress.wait_for(
                lambda: self.report.posts and self.report.acked >= fraction * self.report.posts
            )

    async def run(self, posts: list[bytes]) -> SendReport:
        report = self.report
        report.posts = len(posts)
        began = time.monotonic()
        stop_at = began + self.deadline_s
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(posts)):
            queue.put_nowait(i)
        checks: asyncio.Queue[tuple[int, list[tuple[str, str]]] | None] = asyncio.Queue()
        checker = asyncio.create_task(self._check_acks(checks))
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    if await self._deliver(client, index, posts[index], stop_at):
                        checks.put_nowait((index, event_ids(posts[index])))
                        async with self._progress:
                            report.acked += 1
                            self._progress.notify_all()
                    else:
                        report.unacked += 1

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        checks.put_nowait(None)
        await checker
        report.seconds = time.monotonic() - began
        return report

    async def _deliver(
        self, client: httpx.AsyncClient, index: int, body: bytes, stop_at: float
    ) -> bool:
        headers = {"X-Hub-Signature-256": sign(body, self.secret)}
        attempt = 0
        while time.monotonic() < stop_at:
            url = self.gateways[(index + attempt) % len(self.gateways)]
            self.report.attempts += 1
            try:
                response = await client.post(
                    f"{url}/webhooks/facebook", content=body, headers=headers
                )
                outcome = str(response.status_code)
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            self.report.outcomes[outcome] += 1
            if outcome == "200":
                return True
            attempt += 1
            # Meta's backoff, compressed: 0.1 s doubling to 2 s, with jitter.
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))
        return False

    async def _check_acks(
        self, checks: asyncio.Queue[tuple[int, list[tuple[str, str]]] | None]
    ) -> None:
        """Every acknowledged event must be readable in PostgreSQL as soon as the 200 is
        seen; when PostgreSQL cannot be asked right then, it is asked later."""
        deferred: list[tuple[int, list[tuple[str, str]]]] = []
        conn: psycopg.AsyncConnection | None = None
        try:
            while (item := await checks.get()) is not None:
                try:
                    if conn is None:
                        conn = await psycopg.AsyncConnection.connect(
                            self.database_url, autocommit=True, connect_timeout=2
                        )
                    await self._missing(conn, *item)
                    self.report.checked_at_ack += 1
                except psycopg.OperationalError:
                    if conn is not None:
                        await conn.close()
                    conn = None
                    deferred.append(item)
        finally:
            if conn is not None:
                await conn.close()
        if not deferred:
            return
        for attempt in range(60):
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, connect_timeout=2
                )
                break
            except psycopg.OperationalError:
                if attempt == 59:
                    raise
                await asyncio.sleep(0.5)  # PostgreSQL restarting
        assert conn is not None
        async with conn:
            for item in deferred:
                await self._missing(conn, *item)
                self.report.checked_later += 1

    async def _missing(
        self, conn: psycopg.AsyncConnection, index: int, ids: list[tuple[str, str]]
    ) -> None:
        rows = await (
            await conn.execute(
                "SELECT page_id, event_id FROM router.events"
                " WHERE event_id = ANY(%s) AND platform = 'FACEBOOK'",
                ([event_id for _, event_id in ids],),
            )
        ).fetchall()
        found = {(page, event_id) for page, event_id in rows}
        for key in ids:
            if key not in found:
                self.report.acked_not_committed.append(f"post {index}: {key[1]}")


async def deliver_in_order(gateway: str, secret: str, conversations: list[list[bytes]]) -> None:
    """The reference: each conversation's POSTs one after another (conversations in
    parallel); every one must be answered 200."""

    async def one(posts: list[bytes], client: httpx.AsyncClient) -> None:
        for body in posts:
            response = await client.post(
                f"{gateway}/webhooks/facebook",
                content=body,
                headers={"X-Hub-Signature-256": sign(body, secret)},
            )
            if response.status_code != 200:
                raise AssertionError(f"in-order delivery got {response.status_code}")

    async with httpx.AsyncClient(timeout=15) as client:
        semaphore = asyncio.Semaphore(8)

        async def bounded(posts: list[bytes]) -> None:
            async with semaphore:
                await one(posts, client)

        await asyncio.gather(*(bounded(p) for p in conversations))
