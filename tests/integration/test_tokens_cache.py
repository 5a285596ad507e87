"""The callers' tokens client and its decrypted-token cache, against a real tokens server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pagewire.kit.errors import NotFound, PermissionDenied, Unavailable
from pagewire.kit.settings import Secret, SettingsError
from pagewire.kit.tls import DevPki, generate_pki
from pagewire.kit.tokens_client import TokenCache, TokensClient, cache_ttl_from_env
from services.tokens.access import Access
from tests.support.tokens import RING_A, Tokens, tokens_server
from tests.support.waiting import free_port

PAGE = "109384756201938"
TOKEN = "EAAGcacheTOKENsecretVALUE0123456789abcdefXYZ"
NEW_TOKEN = "EAAGcacheNEWtokenVALUE0123456789abcdefXYZAB"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate_pki(tmp_path_factory.mktemp("pki"), ("tokens", "subscriptions", "gateway"))


@pytest.fixture
async def tokens(database_url: str, pki: DevPki) -> AsyncIterator[Tokens]:
    async with tokens_server(
        database_url,
        RING_A,
        security=pki.security("tokens"),
        client=pki.security("subscriptions"),
        access=Access(allow_unauthenticated=False),
    ) as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(tokens: Tokens, pki: DevPki) -> AsyncIterator[TokensClient]:
    channel = pki.security("subscriptions").channel(f"127.0.0.1:{tokens.port}", "tokens")
    yield TokensClient(channel, timeout_s=5)
    await channel.close()


async def decrypts(tokens: Tokens) -> int:
    return sum(1 for r in await tokens.audit() if r.action == "DECRYPT")


async def test_decrypt_is_cached_for_the_ttl(tokens: Tokens, client: TokensClient) -> None:
    clock = Clock()
    cache = TokenCache(client, ttl_s=60, clock=clock)
    await cache.put("FACEBOOK", PAGE, Secret(TOKEN))
    for _ in range(3):
        token, status = await cache.decrypt("FACEBOOK", PAGE)
        assert (token.get(), status) == (TOKEN, "ACTIVE")
    assert await decrypts(tokens) == 1 and len(cache) == 1
    clock.now += 61
    await cache.decrypt("FACEBOOK", PAGE)
    assert await decrypts(tokens) == 2


async def test_mark_invalid_put_and_delete_drop_the_cached_token(
    tokens: Tokens, client: TokensClient
) -> None:
    cache = TokenCache(client, ttl_s=60, clock=Clock())
    await cache.put("FACEBOOK", PAGE, Secret(TOKEN))
    await cache.decrypt("FACEBOOK", PAGE)
    await cache.mark_invalid("FACEBOOK", PAGE, "expired", 190, 463)
    assert len(cache) == 0
    token, status = await cache.decrypt("FACEBOOK", PAGE)
    assert (token.get(), status) == (TOKEN, "REAUTH_REQUIRED")

    await cache.put("FACEBOOK", PAGE, Secret(NEW_TOKEN))  # re-authorized
    token, status = await cache.decrypt("FACEBOOK", PAGE)
    assert (token.get(), status) == (NEW_TOKEN, "ACTIVE")

    assert await cache.delete("FACEBOOK", PAGE)
    with pytest.raises(NotFound):
        await cache.decrypt("FACEBOOK", PAGE)
    outcomes = [r.outcome for r in await tokens.audit() if r.action == "DECRYPT"]
    assert outcomes == ["OK", "OK", "OK", "NOT_FOUND"]


async def test_the_trade_off_a_token_changed_elsewhere_is_stale_until_the_ttl(
    tokens: Tokens, client: TokensClient
) -> None:
    clock = Clock()
    cache = TokenCache(client, ttl_s=60, clock=clock)
    await cache.put("FACEBOOK", PAGE, Secret(TOKEN))
    await cache.decrypt("FACEBOOK", PAGE)
    await client.put("FACEBOOK", PAGE, Secret(NEW_TOKEN))  # another replica, not through the cache
    assert (await cache.decrypt("FACEBOOK", PAGE))[0].get() == TOKEN
    clock.now += 60
    assert (await cache.decrypt("FACEBOOK", PAGE))[0].get() == NEW_TOKEN


async def test_concurrent_misses_share_one_decrypt(tokens: Tokens, client: TokensClient) -> None:
    cache = TokenCache(client, ttl_s=60)
    await cache.put("FACEBOOK", PAGE, Secret(TOKEN))
    results = await asyncio.gather(*(cache.decrypt("FACEBOOK", PAGE) for _ in range(20)))
    assert {token.get() for token, _ in results} == {TOKEN}
    assert await decrypts(tokens) == 1


async def test_ttl_zero_never_caches(tokens: Tokens, client: TokensClient) -> None:
    cache = TokenCache(client, ttl_s=0)
    await cache.put("FACEBOOK", PAGE, Secret(TOKEN))
    await cache.decrypt("FACEBOOK", PAGE)
    await cache.decrypt("FACEBOOK", PAGE)
    assert await decrypts(tokens) == 2 and len(cache) == 0


async def test_the_cache_is_bounded_and_hides_tokens(tokens: Tokens, client: TokensClient) -> None:
    cache = TokenCache(client, ttl_s=60, max_entries=2)
    for page in ("1", "2", "3"):
        await cache.put("FACEBOOK", page, Secret(TOKEN + page))
        await cache.decrypt("FACEBOOK", page)
    assert len(cache) == 2
    await cache.decrypt("FACEBOOK", "1")  # evicted first: fetched again
    assert await decrypts(tokens) == 4
    assert TOKEN not in repr(cache) and TOKEN not in repr(vars(cache))


async def test_errors_are_domain_errors_without_the_token(tokens: Tokens, pki: DevPki) -> None:
    channel = pki.security("gateway").channel(f"127.0.0.1:{tokens.port}", "tokens")
    try:
        with pytest.raises(PermissionDenied, match="gateway"):
            await TokenCache(TokensClient(channel, 5)).decrypt("FACEBOOK", PAGE)
    finally:
        await channel.close()
    down = pki.security("subscriptions").channel(f"127.0.0.1:{free_port()}", "tokens")
    try:
        with pytest.raises(Unavailable, match="tokens service unavailable"):
            await TokenCache(TokensClient(down, 0.5)).decrypt("FACEBOOK", PAGE)
    finally:
        await down.close()


async def test_other_calls_pass_through_to_the_wrapped_client() -> None:
    class Inner:
        async def status(self, platform: str, page_id: str) -> str:
            return f"{platform}/{page_id}"

        def extra(self) -> str:
            return "passed"

    cache = TokenCache(Inner(), ttl_s=60)  # type: ignore[arg-type]
    assert await cache.status("FACEBOOK", PAGE) == f"FACEBOOK/{PAGE}"
    assert cache.extra() == "passed"


def test_ttl_setting() -> None:
    assert cache_ttl_from_env({}) == 60.0
    assert cache_ttl_from_env({"PAGEWIRE_TOKEN_CACHE_TTL_S": "0"}) == 0.0
    assert cache_ttl_from_env({"PAGEWIRE_TOKEN_CACHE_TTL_S": "2.5"}) == 2.5
    with pytest.raises(SettingsError, match="PAGEWIRE_TOKEN_CACHE_TTL_S"):
        cache_ttl_from_env({"PAGEWIRE_TOKEN_CACHE_TTL_S": "-1"})
