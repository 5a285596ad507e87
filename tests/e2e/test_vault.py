"""The token vault through real processes over mutual TLS: rotate, keys, remove, audit, refusals."""

from __future__ import annotations

import json
import os

import grpc
import pytest

from pagewire import fakegraph
from pagewire.proto import events_pb2, tokens_pb2, tokens_pb2_grpc
from tests.e2e.conftest import PAGE_TOKENS, cli, connect
from tests.support.stack import Stack

PAGE = "109384756201938"
INSTAGRAM = "17841405822304914"


def outputs_hold_no_token(*results: object) -> None:
    for result in results:
        text = getattr(result, "stdout", "") + getattr(result, "stderr", "")
        assert not [page for page, token in PAGE_TOKENS.items() if token in text]


async def test_rotate_keys_remove_and_audit_through_the_cli(
    stack: Stack, graph: fakegraph.FakeGraph
) -> None:
    await connect(stack, PAGE)
    await connect(stack, INSTAGRAM)
    before = json.loads((await cli(stack, "tokens", "keys", "--json")).stdout)
    (old,) = before["keys"]
    assert old["primary"] and old["tokens"] == 2 and old["in_key_ring"]

    rotated = await cli(stack, "tokens", "rotate", "--batch-size", "1")
    assert f"{old['key_id']} -> " in rotated.stdout and "rewrapped 2 token(s)" in rotated.stdout
    keys = await cli(stack, "tokens", "keys")
    assert f"unused, can be removed: {old['key_id']}" in keys.stdout
    after = json.loads((await cli(stack, "tokens", "keys", "--json")).stdout)
    usage = {k["key_id"]: (k["tokens"], k["primary"]) for k in after["keys"]}
    assert usage[old["key_id"]] == (0, False)
    assert usage[after["primary_key_id"]] == (2, True)

    status = json.loads(
        (
            await cli(
                stack, "tokens", "status", "--platform", "facebook", "--page-id", PAGE, "--json"
            )
        ).stdout
    )
    assert status["key_id"] == after["primary_key_id"] and status["format_version"] == 2

    removed = await cli(stack, "tokens", "remove-key", "--key-id", old["key_id"])
    assert "removed from the key ring file" in removed.stdout
    ring = json.loads((stack.workdir / "var" / "keyring.json").read_text())
    assert set(ring["keys"]) == {after["primary_key_id"]}
    refused = await cli(
        stack, "tokens", "remove-key", "--key-id", after["primary_key_id"], check=False
    )
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr

    # The rewrapped token still works: disconnecting decrypts it to unsubscribe through Graph.
    await cli(stack, "pages", "disconnect", "--platform", "facebook", "--page-id", PAGE)
    (delete,) = graph.state.requests_to("DELETE", f"/{PAGE}/subscribed_apps")
    assert delete["bearer_token"] == PAGE_TOKENS[PAGE]

    audit = json.loads((await cli(stack, "tokens", "audit", "--page-id", PAGE, "--json")).stdout)
    trail = [(e["caller"], e["action"], e["outcome"]) for e in reversed(audit)]
    assert ("subscriptions", "PUT", "OK") in trail
    assert ("subscriptions", "DECRYPT", "OK") in trail
    assert ("subscriptions", "DELETE", "OK") in trail
    everything = (await cli(stack, "tokens", "audit")).stdout
    assert "cli" in everything and "ROTATE" in everything and "REMOVE_KEY" in everything
    outputs_hold_no_token(rotated, keys, removed, refused)
    assert all(token not in everything + json.dumps(audit) for token in PAGE_TOKENS.values())


async def test_gateway_certificate_cannot_decrypt(stack: Stack) -> None:
    await connect(stack, PAGE)
    request = tokens_pb2.DecryptTokenRequest(
        page=tokens_pb2.PageRef(platform=events_pb2.FACEBOOK, page_id=PAGE)
    )
    async with stack.channel("tokens", identity="gateway") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await tokens_pb2_grpc.TokensServiceStub(channel).DecryptToken(request, timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with stack.channel("tokens", identity="router") as channel:
        reply = await tokens_pb2_grpc.TokensServiceStub(channel).DecryptToken(request, timeout=10)
    assert reply.token == PAGE_TOKENS[PAGE]
    audit = json.loads((await cli(stack, "tokens", "audit", "--page-id", PAGE, "--json")).stdout)
    # (Subscriptions may decrypt too, for its own checks: only these two callers matter here.)
    mine = [
        (e["caller"], e["outcome"])
        for e in audit
        if e["action"] == "DECRYPT" and e["caller"] in {"router", "gateway"}
    ]
    assert mine == [("router", "OK"), ("gateway", "PERMISSION_DENIED")]
    # Only operators read the audit; a service's certificate is refused.
    async with stack.channel("tokens", identity="subscriptions") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await tokens_pb2_grpc.TokensServiceStub(channel).ListAudit(
                tokens_pb2.ListAuditRequest(), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_cli_without_a_certificate_says_what_to_do(stack: Stack) -> None:
    environ = {**stack.env, "PAGEWIRE_VAR_DIR": str(stack.workdir / "elsewhere")}
    result = await cli(
        Stack(stack.workdir, environ, stack.ports, pki=stack.pki), "tokens", "keys", check=False
    )
    assert result.returncode == 2
    assert "PAGEWIRE_TLS_CA_FILE" in result.stderr and "make run" in result.stderr
    assert os.environ.get("PAGEWIRE_TLS_CA_FILE") is None
