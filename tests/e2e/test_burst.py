"""A burst into one conversation from concurrent POSTs through two gateways and two routers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from tests.e2e.conftest import applied, connect, query, sign
from tests.support.stack import Stack
from tests.support.waiting import free_port

PAGE = "109384756201938"
USER = "7294015836620194"


def body(events: list[tuple[str, int]]) -> bytes:
    return json.dumps(
        {
            "object": "page",
            "entry": [
                {
                    "id": PAGE,
                    "time": 1778163999000,
                    "messaging": [
                        {
                            "sender": {"id": USER},
                            "recipient": {"id": PAGE},
                            "timestamp": ts,
                            "message": {"mid": mid, "text": f"burst {mid}"},
                        }
                        for mid, ts in events
                    ],
                }
            ],
        }
    ).encode()


async def test_burst_of_200_from_20_posts_across_two_routers(
    stack: Stack, database_url: str, tmp_path: Path
) -> None:
    await connect(stack, PAGE)
    router2_port = free_port()
    await stack.start("router", name="router2", PAGEWIRE_ROUTER_PORT=str(router2_port))
    gateway2 = await stack.start(
        "gateway",
        name="gateway2",
        PAGEWIRE_GATEWAY_PORT=str(free_port()),
        PAGEWIRE_ROUTER_ADDR=f"127.0.0.1:{router2_port}",
    )
    urls = [stack.gateway_url, f"http://127.0.0.1:{gateway2.port}"]
    # Timestamps deliberately out of order inside and across the POSTs.
    events = [(f"m_burst_{i:03d}", 1778163000000 + (i * 7919) % 200 * 10) for i in range(200)]
    posts = [events[i::20] for i in range(20)]

    async def send(i: int, chunk: list[tuple[str, int]]) -> int:
        payload = body(chunk)
        async with httpx.AsyncClient(timeout=15) as client:
            response = await client.post(
                f"{urls[i % 2]}/webhooks/facebook",
                content=payload,
                headers={"X-Hub-Signature-256": sign(payload)},
            )
        return response.status_code

    statuses = await asyncio.gather(*(send(i, chunk) for i, chunk in enumerate(posts)))
    assert statuses == [200] * 20
    await applied(database_url)
    rows = query(
        database_url,
        "SELECT m.mid, m.timestamp_ms FROM router.messages m ORDER BY m.timestamp_ms, m.mid",
    )
    assert len(rows) == 200
    assert len({mid for mid, _ in rows}) == 200
    assert [ts for _, ts in rows] == sorted(ts for _, ts in events)
    assert query(database_url, "SELECT count(*) FROM router.conversations")[0][0] == 1
