"""Generated webhooks against the gateway alone: every event it emits keeps the event contract,
and with a router that works it never answers a 5xx.

The bodies are those of test_gateway_fuzz (changes[] items included, comments, post
reactions and mentions among them). Here the
gateway runs in this process in front of a fake router over real gRPC, so each
Ingest's events can be checked one by one with `contract.unstorable`; the
normalization is also checked directly, without HTTP, on many more envelopes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagewire import contract
from pagewire.kit.authz import Policy
from pagewire.kit.grpcserver import start_server
from pagewire.normalize import event_digest, normalize_envelope, renormalize
from pagewire.proto import events_pb2, router_pb2_grpc
from services.gateway.app import ROUTER_SERVICE
from tests.fuzz.test_gateway_fuzz import (
    APP_SECRET,
    _render,
    change,
    envelopes,
    item,
    sign,
    signed_bodies,
    timestamps,
)
from tests.integration.test_gateway_http import FakeRouter, gateway_env, running_gateway

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("PAGEWIRE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def broken_contract(events: list[events_pb2.Event]) -> list[tuple[str, str]]:
    """(event id, reason) of every event the router could not store as its kind."""
    found = []
    for event in events:
        reason = contract.unstorable(event)
        if reason is None and len(event.id) > contract.MAX_EVENT_ID:
            reason = f"id: longer than {contract.MAX_EVENT_ID}"
        if reason is None and not event.id:
            reason = "id: empty"
        if reason is not None:
            found.append((event.id[:80], reason))
    return found


PAGE = "109384756201938"
# Items that have their page and person, so that their own fields (mids, reactions, app
# ids) meet the contract's limits rather than being kept raw for lack of a person first.
addressed_items = st.one_of(item, change).map(
    lambda i: {**i, "sender": {"id": "7294015836620194"}, "recipient": {"id": PAGE}}
)
addressed = st.fixed_dictionaries(
    {
        "object": st.just("page"),
        "entry": st.lists(
            st.fixed_dictionaries(
                {"id": st.just(PAGE), "time": timestamps},
                optional={
                    "messaging": st.lists(addressed_items, max_size=4),
                    "standby": st.lists(addressed_items, max_size=2),
                    "changes": st.lists(change, max_size=3),
                },
            ),
            max_size=3,
        ),
    }
)


@settings(FUZZ, max_examples=EXAMPLES * 5)
@given(
    body=envelopes | addressed,
    platform=st.sampled_from([events_pb2.FACEBOOK, events_pb2.INSTAGRAM]),
)
def test_normalized_events_always_keep_the_contract(body: object, platform: int) -> None:
    if not isinstance(body, dict):
        return
    events = normalize_envelope(body, platform=platform, received_at_ms=1_800_000_000_000)
    assert broken_contract(events) == []
    for event in events:
        events_pb2.Event.FromString(event.SerializeToString())


MODELLED = {"comment", "post_reaction", "mention"}


@settings(FUZZ, max_examples=EXAMPLES * 3)
@given(
    changes=st.lists(change, min_size=1, max_size=4),
    time=timestamps,
    platform=st.sampled_from([events_pb2.FACEBOOK, events_pb2.INSTAGRAM]),
)
def test_a_change_is_its_kind_or_kept_raw_under_its_field_and_its_id_never_moves(
    changes: list[dict[str, object]], time: object, platform: int
) -> None:
    body = {"object": "page", "entry": [{"id": PAGE, "time": time, "changes": changes}]}
    demoted: list[str] = []
    events = normalize_envelope(
        body,
        platform=platform,
        received_at_ms=1_800_000_000_000,
        on_demoted=lambda _event, reason: demoted.append(reason),
    )
    # What the contract refuses stays `unsupported` of its field, never `<kind>:invalid`.
    assert demoted == [] and broken_contract(events) == []
    assert len(events) == len(changes)
    for event, one_change in zip(events, changes, strict=True):
        field = event.id.rsplit(":", 1)[0]
        assert event.id == event_digest(field, platform, PAGE, one_change)
        kind = event.WhichOneof("kind")
        assert kind in MODELLED or event.unsupported.kind == field
        assert event.user_id == ""
        # Normalized again from its raw item (the router after an upgrade): the same event.
        assert renormalize(event) == event


@pytest.fixture(scope="module")
async def router() -> AsyncIterator[FakeRouter]:
    fake = FakeRouter()
    fake.service = await start_server(
        names=[ROUTER_SERVICE],
        register=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(fake, server),
        access=Policy.open([ROUTER_SERVICE]),
        port=0,
    )
    try:
        yield fake
    finally:
        await fake.service.stop(grace=0)


@pytest.fixture(scope="module")
async def gateway(router: FakeRouter) -> AsyncIterator[httpx.AsyncClient]:
    assert router.service is not None
    async with running_gateway(gateway_env(router.service.port)) as client:
        yield client


@FUZZ
@given(
    body=signed_bodies() | addressed.map(_render),
    path=st.sampled_from(["/webhooks/facebook", "/webhooks/instagram"]),
)
async def test_with_a_working_router_no_5xx_and_every_event_keeps_the_contract(
    gateway: httpx.AsyncClient, router: FakeRouter, body: bytes, path: str
) -> None:
    router.received.clear()
    response = await gateway.post(
        path, content=body, headers={"X-Hub-Signature-256": sign(body, APP_SECRET)}
    )
    assert response.status_code in {200, 400, 413}, (response.status_code, response.text)
    assert broken_contract(router.events()) == []
    assert all(len(r.events) <= contract.MAX_EVENTS_PER_CALL for r in router.received)
    if response.status_code == 200:
        assert response.json()["events"] == len(router.events())
