"""Conversations to deliver, and a sender that delivers them the way Meta does.

A `Workload` is a set of scripted conversations (messages, echoes, edits,
reactions, deliveries, reads) in Meta's item shapes. `chaos_posts` is how Meta
delivers them on a bad day: every conversation shuffled, 10% of items sent
twice, items of different conversations batched into one POST.
`reference_posts` is the same conversations for other users, one item per
POST in timestamp order: the in-order delivery the chaos run must end equal to.

`MetaSender` retries every POST that gets no 200 (an error status, a reset or
refused connection, a timeout) with exponential backoff, rotating over the
gateways, and checks at each 200, before it sends anything else, that the POST's
events are already in the router's event log (no ACK before commit). It keeps
every answer with its time, so a scenario can say what was answered while its
fault lasted. `deliver_in_order` waits for each POST's events to be applied
before it sends the next one of the same conversation.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from bench.bodies import sign
from pagewire.normalize import normalize_envelope, parse_envelope

APP_ID = 1094728365019283
# The pages every scenario's conversations are spread over, and their accounts.
PAGES = {"109384756201938": "acme", "117465829304716": "globex"}
# A third page of acme's, connected with the others, with traffic in scenario 7 only:
# that scenario purges it, and its tombstone would drop any later scenario's events.
PURGE_PAGE = "126547893021564"
ALL_PAGES = {**PAGES, PURGE_PAGE: "acme"}
BASE_MS = 1_785_000_000_000

# (page id, event id, Meta timestamp) of one event, as the gateway normalizes it.
EventKey = tuple[str, str, int]


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
        page = it["recipient"]["id"] if it["recipient"]["id"] in ALL_PAGES else it["sender"]["id"]
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
    return [(page, event_id) for page, event_id, _ in event_keys(body)]


def event_keys(body: bytes) -> list[EventKey]:
    """(page id, event id, Meta timestamp) of every event the gateway makes of `body`."""
    return [(e.page_id, e.id, e.timestamp_ms) for e in normalize_envelope(parse_envelope(body))]


def fresh_messages(page: str, users: Sequence[str], at_ms: int) -> list[bytes]:
    """One inbound message per user, stamped from `at_ms` on: items Meta sends now."""
    return [
        envelope(
            [
                {
                    "sender": {"id": user},
                    "recipient": {"id": page},
                    "timestamp": at_ms + n,
                    "message": {"mid": f"m_{user}_fresh", "text": "written after the purge"},
                }
            ]
        )
        for n, user in enumerate(users)
    ]


@dataclass
class Workload:
    """Conversations for one scenario, and their in-order twins for the comparison."""

    conversations: list[Conversation]
    references: list[Conversation]

    @classmethod
    def build(
        cls,
        tag: int,
        count: int,
        size: tuple[int, int],
        seed: int,
        pages: Sequence[str] = tuple(PAGES),
    ) -> Workload:
        """`count` conversations spread round robin over `pages`, each with its twin."""
        rng = random.Random(seed)
        pages = list(pages)
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

    def reference_posts(self, exclude_pages: Sequence[str] = ()) -> list[list[bytes]]:
        """Per reference conversation, its items one per POST, in order."""
        return [
            [envelope([it]) for it in conv.items]
            for conv in self.references
            if conv.page not in exclude_pages
        ]

    def without(self, pages: Sequence[str]) -> Workload:
        """The conversations (and twins) that are not on `pages`."""
        pairs = [
            (c, r)
            for c, r in zip(self.conversations, self.references, strict=True)
            if c.page not in pages
        ]
        return Workload([c for c, _ in pairs], [r for _, r in pairs])

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
    # Acknowledged events not in the log because a purge's tombstone covers them: deleted
    # by the purge after the 200, or dropped at the append (a purged body delivered again).
    acked_purged: int = 0
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
            "acked_events_purged": self.acked_purged,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class Answer:
    """One attempt: when it was sent and answered (monotonic seconds), and how."""

    sent: float
    answered: float
    outcome: str  # the status code, "timeout", or the transport error's name


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
        self.answers: list[Answer] = []
        self.acked_at: dict[int, float] = {}  # post index → when its 200 arrived (monotonic)
        self._progress = asyncio.Condition()

    async def progress(self, fraction: float) -> None:
        """Returns once `fraction` of the POSTs were acknowledged (a fault's trigger)."""
        async with self._progress:
            await self._progress.wait_for(
                lambda: self.report.posts and self.report.acked >= fraction * self.report.posts
            )

    def answers_during(self, start: float, end: float) -> Counter[str]:
        """How the attempts in flight at any time between `start` and `end` were answered."""
        return Counter(a.outcome for a in self.answers if a.answered >= start and a.sent <= end)

    async def run(self, posts: list[bytes]) -> SendReport:
        report = self.report
        report.posts = len(posts)
        began = time.monotonic()
        stop_at = began + self.deadline_s
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(posts)):
            queue.put_nowait(i)
        deferred: list[tuple[int, list[EventKey]]] = []
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

            async def worker() -> None:
                checker = _AckChecker(self.database_url, report)
                try:
                    while not queue.empty():
                        index = queue.get_nowait()
                        if await self._deliver(client, index, posts[index], stop_at):
                            self.acked_at[index] = time.monotonic()
                            # Before this worker sends anything else: the 200 is fresh.
                            if not await checker.check(index, event_keys(posts[index])):
                                deferred.append((index, event_keys(posts[index])))
                            async with self._progress:
                                report.acked += 1
                                self._progress.notify_all()
                        else:
                            report.unacked += 1
                finally:
                    await checker.close()

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        if deferred:
            await _check_later(self.database_url, report, deferred)
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
            sent = time.monotonic()
            try:
                response = await client.post(
                    f"{url}/webhooks/facebook", content=body, headers=headers
                )
                outcome = str(response.status_code)
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            self.answers.append(Answer(sent, time.monotonic(), outcome))
            self.report.outcomes[outcome] += 1
            if outcome == "200":
                return True
            attempt += 1
            # Meta's backoff, compressed: 0.1 s doubling to 2 s, with jitter.
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))
        return False


# The POST's events that are not in the log, and whether a purge's tombstone covers each.
_MISSING = (
    "SELECT k.page_id, k.event_id, coalesce(p.purged_at_ms >= k.ts, false)"
    " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS k(page_id, event_id, ts)"
    " LEFT JOIN router.events e ON e.platform = 'FACEBOOK' AND e.page_id = k.page_id"
    " AND e.event_id = k.event_id"
    " LEFT JOIN router.purged_pages p ON p.platform = 'FACEBOOK' AND p.page_id = k.page_id"
    " WHERE e.id IS NULL"
)


async def _missing(
    conn: psycopg.AsyncConnection, report: SendReport, index: int, keys: list[EventKey]
) -> None:
    """Counts the POST's events that are not in `router.events`: each is a 200 before
    commit, unless a purge deleted it or dropped it at the append (its tombstone says)."""
    columns = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    rows = await (await conn.execute(_MISSING, columns)).fetchall()
    for _page, event_id, purged in rows:
        if purged:
            report.acked_purged += 1
        else:
            report.acked_not_committed.append(f"post {index}: {event_id}")


class _AckChecker:
    """One sender worker's connection for the check at each 200; when PostgreSQL cannot
    be asked right then (it is down), the caller defers the check."""

    def __init__(self, database_url: str, report: SendReport) -> None:
        self._url = database_url
        self._report = report
        self._conn: psycopg.AsyncConnection | None = None

    async def check(self, index: int, keys: list[EventKey]) -> bool:
        """True when checked (a miss is counted); False when it must be done later."""
        try:
            if self._conn is None:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=2
                )
            await _missing(self._conn, self._report, index, keys)
        except psycopg.OperationalError:
            await self.close()
            return False
        self._report.checked_at_ack += 1
        return True

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        self._conn = None


async def _check_later(
    database_url: str, report: SendReport, deferred: list[tuple[int, list[EventKey]]]
) -> None:
    """The checks that fell into a PostgreSQL outage, once it is back."""
    for attempt in range(60):
        try:
            conn = await psycopg.AsyncConnection.connect(
                database_url, autocommit=True, connect_timeout=2
            )
            break
        except psycopg.OperationalError:
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)  # PostgreSQL restarting
    async with conn:
        for index, keys in deferred:
            await _missing(conn, report, index, keys)
            report.checked_later += 1


# Of a POST's events: how many are in the log, how many applied, and the other states.
_APPLIED = (
    "SELECT count(e.id), count(*) FILTER (WHERE e.state = 'applied'),"
    " string_agg(DISTINCT e.state, ',') FILTER (WHERE e.state NOT IN ('applied', 'pending'))"
    " FROM unnest(%s::text[], %s::text[]) AS k(page_id, event_id)"
    " LEFT JOIN router.events e ON e.platform = 'FACEBOOK' AND e.page_id = k.page_id"
    " AND e.event_id = k.event_id"
)


@dataclass
class InOrderReport:
    posts: int = 0
    apply_waits_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        waits = sorted(self.apply_waits_s) or [0.0]
        return {
            "posts": self.posts,
            "apply_wait_p50_ms": round(1000 * waits[len(waits) // 2]),
            "apply_wait_max_ms": round(1000 * waits[-1]),
        }


async def deliver_in_order(
    gateway: str,
    secret: str,
    conversations: list[list[bytes]],
    database_url: str,
    *,
    apply_timeout_s: float = 30.0,
) -> InOrderReport:
    """The reference: each conversation's POSTs one after another (conversations in
    parallel), every one answered 200 and its events applied before the next is sent —
    so the order they are applied in is the order they were sent in."""
    report = InOrderReport()

    async def applied(conn: psycopg.AsyncConnection, body: bytes) -> None:
        keys = event_ids(body)
        columns = ([k[0] for k in keys], [k[1] for k in keys])
        began = time.monotonic()
        while True:
            stored, done, other = await (await conn.execute(_APPLIED, columns)).fetchone()  # type: ignore[misc]
            if done == len(keys):
                report.apply_waits_s.append(time.monotonic() - began)
                return
            if other or stored < len(keys) or time.monotonic() - began > apply_timeout_s:
                raise AssertionError(
                    f"in-order delivery: {stored} of {len(keys)} events stored, {done} applied"
                    f" after {time.monotonic() - began:.1f} s (other states: {other or '-'})"
                )
            await asyncio.sleep(0.005)  # polling the log: the apply stage has no waitable signal

    async def one(posts: list[bytes], client: httpx.AsyncClient) -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for body in posts:
                response = await client.post(
                    f"{gateway}/webhooks/facebook",
                    content=body,
                    headers={"X-Hub-Signature-256": sign(body, secret)},
                )
                if response.status_code != 200:
                    raise AssertionError(f"in-order delivery got {response.status_code}")
                report.posts += 1
                await applied(conn, body)

    async with httpx.AsyncClient(timeout=15) as client:
        semaphore = asyncio.Semaphore(8)

        async def bounded(posts: list[bytes]) -> None:
            async with semaphore:
                await one(posts, client)

        await asyncio.gather(*(bounded(p) for p in conversations))
    return report
