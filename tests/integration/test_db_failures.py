"""PostgreSQL failing under real router and gateway processes: no values in any log line,
read-only and unreachable databases answer 503 with one warning each, readiness follows."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from pagewire.kit.settings import redacted_url
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from services.tokens.vault import generate_keyring
from tests.conftest import ADMIN_PG
from tests.support.outages import (
    log_lines,
    post,
    readyz,
    router_and_gateway,
    router_status,
    webhook,
)
from tests.support.routerharness import PAGE, USER
from tests.support.stack import Stack
from tests.support.waiting import free_port, wait_for

PLANT = "PWPLANT"  # every marker starts so; the CHECK constraint refuses texts containing it


def plain(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


def execute(database_url: str, *statements: str) -> None:
    with psycopg.connect(plain(database_url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def marker() -> str:
    return f"{PLANT}{secrets.token_hex(8)}"


def ingest_request(mid: str, text: str) -> router_pb2.IngestRequest:
    return router_pb2.IngestRequest(
        events=[
            events_pb2.Event(
                id=mid,
                platform=events_pb2.FACEBOOK,
                page_id=PAGE,
                user_id=USER,
                direction=events_pb2.INBOUND,
                timestamp_ms=1_778_163_000_000,
                raw_json=f'{{"text": "{text}"}}',
                message=events_pb2.MessageEvent(mid=mid, text=text),
            )
        ]
    )


async def ingest_error(stack: Stack, request: router_pb2.IngestRequest) -> grpc.aio.AioRpcError:
    async with stack.channel("router") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await router_pb2_grpc.RouterServiceStub(channel).Ingest(request, timeout=10)
    return caught.value


@pytest.fixture
async def suite(
    tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[Stack]:
    async with router_and_gateway(
        tmp_path, database_url=database_url, redis_url=redis_url, redis_prefix=redis_prefix
    ) as stack:
        yield stack


async def test_a_failing_insert_logs_no_values(suite: Stack, database_url: str) -> None:
    # An unexpected failure of the append (the log, on the ACK path) that quotes the row:
    # `DETAIL: Failing row contains (…raw item…)`.
    execute(
        database_url,
        "ALTER TABLE router.events ADD CONSTRAINT pw_no_plant"
        f" CHECK (position('{PLANT}' in raw_json) = 0)",
    )
    by_check = [marker(), marker()]
    assert (await post(suite, webhook(f"m_{by_check[0]}", by_check[0]))).status_code == 503
    refused = await ingest_error(suite, ingest_request(f"m_{by_check[1]}", by_check[1]))
    assert refused.code() == grpc.StatusCode.INTERNAL
    assert refused.details() == "internal error"

    # One that quotes the value in its message, DETAIL and HINT, under a unique violation's
    # SQLSTATE (as `Key (mid)=(…) already exists` would).
    execute(
        database_url,
        """CREATE FUNCTION router.pw_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION USING ERRCODE = 'unique_violation',
            MESSAGE = 'duplicate key value ' || NEW.raw_json,
            DETAIL = 'Key (raw_json)=(' || NEW.raw_json || ') already exists.',
            HINT = NEW.raw_json;
        END $$""",
        "ALTER TABLE router.events DROP CONSTRAINT pw_no_plant",
        "CREATE TRIGGER pw_refuse BEFORE INSERT ON router.events"
        " FOR EACH ROW EXECUTE FUNCTION router.pw_refuse()",
    )
    by_trigger = [marker(), marker()]
    assert (await post(suite, webhook(f"m_{by_trigger[0]}", by_trigger[0]))).status_code == 503
    refused = await ingest_error(suite, ingest_request(f"m_{by_trigger[1]}", by_trigger[1]))
    assert (refused.code(), refused.details()) == (grpc.StatusCode.INTERNAL, "internal error")

    logs = suite.logs()
    for planted in (*by_check, *by_trigger):
        assert planted not in logs
    errors = [line for line in log_lines(suite.procs["router"]) if line["msg"] == "unhandled error"]
    assert len(errors) == 4
    traces = [str(line["error"]) for line in errors]
    # What is logged instead: the class, SQLSTATE and names, and the stack frames.
    assert all(t.startswith("Traceback (most recent call last):") for t in traces)
    assert all("sqlalchemy.exc.IntegrityError" in t for t in traces)
    assert sum("SQLSTATE 23514" in t and "constraint pw_no_plant" in t for t in traces) == 2
    assert sum("SQLSTATE 23505" in t for t in traces) == 2
    assert PLANT not in logs  # not even a prefix of a value leaked


async def test_a_failing_apply_logs_no_values(suite: Stack, database_url: str) -> None:
    """A failure in the apply stage (after the 200): the batch is retried, and its log lines
    carry the class and SQLSTATE, never the message text."""
    execute(
        database_url,
        "ALTER TABLE router.messages ADD CONSTRAINT pw_no_plant"
        f" CHECK (position('{PLANT}' in text) = 0)",
    )
    planted = marker()
    assert (await post(suite, webhook(f"m_{planted}", planted))).status_code == 200

    def failed() -> list[dict[str, object]]:
        return [
            line
            for line in log_lines(suite.procs["router"])
            if str(line["msg"]).startswith("apply batch failed")
        ]

    await wait_for(failed, timeout=10, what="the apply stage to fail on the planted row")
    (first, *_) = failed()
    assert "SQLSTATE 23514" in str(first["error"]) and "constraint pw_no_plant" in str(
        first["error"]
    )
    assert planted not in suite.logs() and PLANT not in suite.logs()

    def kept() -> list[dict[str, object]]:
        return [
            line
            for line in log_lines(suite.procs["router"])
            if str(line["msg"]).startswith("log entry kept as failed")
        ]

    # The entry is set aside (kept, listed), so it does not stall the entries after it.
    await wait_for(kept, timeout=10, what="the refused entry to be set aside")
    assert (await post(suite, webhook("m_after", "after"))).status_code == 200


async def test_a_read_only_database_is_unavailable_with_one_warning_per_request(
    suite: Stack, database_url: str
) -> None:
    name = database_url.rsplit("/", 1)[1]
    assert (await post(suite, webhook("m_ro_before", "before"))).status_code == 200
    # New connections are read-only; the open ones are cut, so the pool reconnects.
    execute(
        ADMIN_PG,
        f'ALTER DATABASE "{name}" SET default_transaction_read_only = on',
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
    )
    for i in range(3):
        assert (await post(suite, webhook(f"m_ro_{i}", f"during {i}"))).status_code == 503
    refused = await ingest_error(suite, ingest_request("m_ro_direct", "direct"))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert "read_only_sql_transaction, SQLSTATE 25006" in refused.details()

    router = log_lines(suite.procs["router"])
    unavailable = [line for line in router if line["msg"] == "database unavailable"]
    assert len(unavailable) == 4  # one line per request
    assert {line["level"] for line in unavailable} == {"warning"}
    assert {line["reason"] for line in unavailable} == {"read_only_sql_transaction, SQLSTATE 25006"}
    assert not [line for line in router if "error" in line or line["level"] == "error"]
    # Reading still works, so the router stays ready (Meta's retries are the remedy).
    assert await readyz(suite) == 200


async def test_an_unreachable_database_makes_the_router_not_ready(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # Nothing listens on the port; the URL carries a password that must never be logged.
    password = f"pw{secrets.token_hex(6)}"
    closed = f"postgresql+psycopg://pagewire:{password}@127.0.0.1:{free_port()}/pagewire"
    async with router_and_gateway(
        tmp_path,
        database_url=closed,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        PAGEWIRE_READINESS_INTERVAL_S="0.2",
    ) as stack:

        async def not_ready() -> bool:
            return await readyz(stack) == 503

        await wait_for(not_ready, timeout=10, what="/readyz to answer 503")
        assert await router_status(stack) == health_pb2.HealthCheckResponse.NOT_SERVING
        # Liveness asks for "": an outage of PostgreSQL must not restart the pod.
        assert await router_status(stack, "") == health_pb2.HealthCheckResponse.SERVING
        assert (await post(stack, webhook("m_down", "while down"))).status_code == 503
        router = log_lines(stack.procs["router"])
    not_ready = [line for line in router if str(line["msg"]).startswith("not ready")]
    assert len(not_ready) == 1 and list(not_ready[0]["failing"]) == ["postgresql"]  # type: ignore[call-overload]
    assert not [line for line in router if "error" in line]
    assert password not in stack.logs()
    assert redacted_url(closed) in {line.get("database") for line in router}


async def test_start_up_logs_carry_no_password(
    tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    # Local PostgreSQL trusts 127.0.0.1, so the password is accepted and ignored.
    password = f"pw{secrets.token_hex(6)}"
    with_password = database_url.replace("://postgres@", f"://postgres:{password}@")
    assert password in with_password
    stack = Stack.create(
        tmp_path,
        database_url=with_password,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        graph_url="http://127.0.0.1:9",
        keyring=generate_keyring(),
    )
    try:
        for service in ("tokens", "subscriptions", "router", "gateway"):
            await stack.start(service)
        assert await readyz(stack) == 200
    finally:
        await stack.stop_all()
    logs = stack.logs()
    assert password not in logs
    assert f"postgres:{password}@" not in logs
    assert "://postgres:***@" in logs  # the router names its database, redacted
