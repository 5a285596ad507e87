"""The short chaos run of `make test`: scenarios 1–3, 6 and 7 on a PostgreSQL and Redis
of its own.

`make chaos` runs all nine scenarios at full size (`python -m tests.chaos`).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from bench.procs import APP_SECRET
from tests.chaos.meta import Workload, deliver_in_order, envelope
from tests.chaos.scenarios import SHORT, Harness, harness, run_scenario
from tests.chaos.verify import compare, drain

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(240)]
SEED = secrets.randbelow(10**6)


@pytest.fixture(scope="module")
async def chaos() -> AsyncIterator[Harness]:
    async with harness() as h:
        yield h


@pytest.mark.parametrize(
    "scenario",
    [
        "1_router_killed",
        "2_redis_restarted_empty",
        "3_postgres_restarted",
        "6_page_moved",
        "7_page_purged",
    ],
)
async def test_nothing_lost_doubled_or_reordered(chaos: Harness, scenario: str) -> None:
    result = await run_scenario(chaos, scenario, SHORT, SEED)
    assert result["fault"] != "not reached", result
    if scenario == "3_postgres_restarted":
        assert result["sender"]["retries"] > 0, "the outage went unnoticed: nothing was retried"
    assert result["sender"]["acked_not_committed"] == 0, result["acked_not_committed_examples"]
    assert result["pending_after_run"] == 0, result["log_after_run"]
    assert (
        result["lost"],
        result["not_applied"],
        result["duplicated"],
        result["state_mismatches"],
    ) == (0, 0, 0, 0), result["examples"]
    assert result["passed"], f"seed {SEED}: {result['failures']}"


async def test_the_comparison_sees_a_difference(chaos: Harness) -> None:
    """The verdict is not vacuous: a twin missing one message is reported as different."""
    workload = Workload.build(99, 3, (4, 6), SEED)
    twin = workload.references[0]
    dropped = next(i for i, item in enumerate(twin.items) if "message" in item)
    in_order = [[envelope([item]) for item in conv.items] for conv in workload.conversations]
    twins = [[envelope([item]) for item in conv.items] for conv in workload.references[1:]]
    short_twin = [envelope([item]) for i, item in enumerate(twin.items) if i != dropped]
    await deliver_in_order(
        chaos.gateways[0], APP_SECRET, in_order + twins + [short_twin], chaos.database_url
    )
    assert (await drain(chaos.database_url, 30))["pending"] == 0
    verdict = compare(chaos.database_url, workload)
    assert (
        verdict["lost"],
        verdict["not_applied"],
        verdict["duplicated"],
        verdict["state_mismatches"],
    ) == (0, 0, 0, 1)
