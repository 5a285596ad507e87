"""The ceiling: the least a durable webhook receiver must do, as one uvicorn process.

`python -m bench.ceiling` serves `POST /webhooks/facebook` and `/webhooks/instagram`
with a bare ASGI callable on uvicorn (uvloop, httptools): it checks
`X-Hub-Signature-256` with the gateway's own check (HMAC-SHA256 of the raw body,
constant-time compare), parses the JSON, counts its items and appends the raw body
to a table of its own with a **group commit**: every request that arrives while a
commit is in flight waits for the next one, which writes them all with one
multi-row statement (`INSERT … SELECT FROM unnest(…)`, autocommit: one statement,
one transaction) on one psycopg connection. It answers 200 only after that commit.
Nothing else — no routing, no locks, no dedup — so what Pagewire acknowledges
durably can be put over it as a ratio measured on the same machine, database,
driver and bodies.

`GET /healthz` answers once the connection is open; `GET /stats` gives the 200s
it sent and the commits it made, which the bench compares with the rows in the
table (every 200 must be a committed row). `PAGEWIRE_CEILING_STORE=0` skips the
database (the HTTP + signature + JSON part alone).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import uvicorn

from services.gateway.signature import is_valid

TABLE = "public.bench_ceiling"
PATHS = frozenset({"/webhooks/facebook", "/webhooks/instagram"})
# Binary parameters (%b): psycopg dumps a text[] in text format with a Python regex per
# element (~38 µs for a 430-byte JSON body); in binary, ~0.2 µs.
_INSERT = f"INSERT INTO {TABLE} (events, body) SELECT * FROM unnest(%b::int[], %b::text[])"
_SIGNATURE = b"x-hub-signature-256"


# Not bench.db's: importing it pulls in the migrations (Alembic, SQLAlchemy) for nothing.
def plain_url(url: str) -> str:
    """A libpq URL from the services' `postgresql+psycopg://` one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def prepare(url: str) -> None:
    """Creates the ceiling's table in the bench database, empty."""
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE}"
            " (id bigserial PRIMARY KEY, events integer NOT NULL, body text NOT NULL)"
        )
        conn.execute(f"TRUNCATE {TABLE}")


def stored(url: str) -> tuple[int, int]:
    """Rows committed in the ceiling's table, and the events they carry."""
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*), coalesce(sum(events), 0) FROM {TABLE}").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def count_events(envelope: object) -> int:
    """The items of a webhook body (`entry[].messaging` and `entry[].standby`)."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("entry"), list):
        raise ValueError("not a webhook envelope")
    total = 0
    for entry in envelope["entry"]:
        if not isinstance(entry, dict):
            raise ValueError("entry is not an object")
        for key in ("messaging", "standby"):
            items = entry.get(key, [])
            if not isinstance(items, list):
                raise ValueError(f"{key} is not a list")
            total += len(items)
    return total


@dataclass(frozen=True)
class CeilingSettings:
    """What `python -m bench.ceiling` reads from the environment."""

    port: int
    secret: bytes
    database_url: str | None  # None: no storage

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CeilingSettings:
        missing = [
            name
            for name in ("PAGEWIRE_CEILING_PORT", "PAGEWIRE_APP_SECRET")
            if not environ.get(name)
        ]
        store = environ.get("PAGEWIRE_CEILING_STORE", "1") != "0"
        url = environ.get("PAGEWIRE_CEILING_DATABASE_URL") or environ.get("PAGEWIRE_DATABASE_URL")
        if store and not url:
            missing.append("PAGEWIRE_CEILING_DATABASE_URL")
        if missing:
            raise SystemExit(f"bench.ceiling: {', '.join(missing)} not set")
        return cls(
            port=int(environ["PAGEWIRE_CEILING_PORT"]),
            secret=environ["PAGEWIRE_APP_SECRET"].encode(),
            database_url=plain_url(url) if store and url else None,
        )


class GroupCommit:
    """Appends bodies in batches: whatever queued up during one commit goes in the next."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._queue: list[tuple[int, str, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.rows = 0
        self.largest_batch = 0

    async def start(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._conn is not None:
            await self._conn.close()

    async def append(self, events: int, body: str) -> None:
        """Returns once `body` is committed; raises when its commit failed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((events, body, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        assert self._conn is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                await self._conn.execute(_INSERT, ([b[0] for b in batch], [b[1] for b in batch]))
            except psycopg.Error as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
                continue
            self.commits += 1
            self.rows += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)


class Ceiling:
    """The ASGI callable: verify, parse, group-commit, then 200."""

    def __init__(self, settings: CeilingSettings) -> None:
        self._secret = settings.secret
        self._url = settings.database_url
        self._log: GroupCommit | None = None
        self.acked_posts = 0
        self.acked_events = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._url is not None:
                    self._log = GroupCommit(self._url)
                    await self._log.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._log is not None:
                    await self._log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/healthz":
            return await _answer(send, 200, b"ok")
        if method == "GET" and path == "/stats":
            return await _answer(send, 200, json.dumps(self.stats()).encode())
        if method != "POST" or path not in PATHS:
            return await _answer(send, 404, b"not found")
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        header = next((v for k, v in scope["headers"] if k == _SIGNATURE), None)
        if header is None or not is_valid(body, header.decode("latin-1"), self._secret):
            return await _answer(send, 401, b"bad signature")
        try:
            events = count_events(json.loads(body))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return await _answer(send, 400, b"bad body")
        if self._log is not None:
            try:
                await self._log.append(events, body.decode())
            except psycopg.Error:
                return await _answer(send, 503, b"not stored")
        self.acked_posts += 1
        self.acked_events += events
        return await _answer(send, 200, b"EVENT_RECEIVED")

    def stats(self) -> dict[str, int | bool]:
        log = self._log
        return {
            "stores": log is not None,
            "acked_posts": self.acked_posts,
            "acked_events": self.acked_events,
            "commits": log.commits if log else 0,
            "rows": log.rows if log else 0,
            "largest_batch": log.largest_batch if log else 0,
        }


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main(environ: Mapping[str, str] = os.environ) -> int:
    settings = CeilingSettings.from_env(environ)
    config = uvicorn.Config(
        Ceiling(settings),
        host="127.0.0.1",
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
