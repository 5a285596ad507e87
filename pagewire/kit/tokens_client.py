"""The tokens service for its callers: a client, and a short cache of decrypted tokens.

`TokensClient`: every call has a deadline and fails as a domain error whose
message names the peer, never the token.

`TokenCache` wraps any such client (this one, or subscriptions' own): `decrypt`
may answer from memory for `ttl_s` (`PAGEWIRE_TOKEN_CACHE_TTL_S`, default 60 s;
0 turns it off) — fewer round trips and audit records, at the price that a token
replaced or flagged through *another* process is used here for up to that long.
Whatever goes through the wrapper itself (put, delete, mark invalid) drops the
page's cached copy at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from pagewire.kit.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PagewireError,
    PermissionDenied,
    Unavailable,
)
from pagewire.kit.settings import Secret, env_float
from pagewire.proto import events_pb2, tokens_pb2, tokens_pb2_grpc

DEFAULT_CACHE_TTL_S = 60.0
DEFAULT_CACHE_ENTRIES = 10_000
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_STATUS_NAME = {tokens_pb2.ACTIVE: "ACTIVE", tokens_pb2.REAUTH_REQUIRED: "REAUTH_REQUIRED"}


def cache_ttl_from_env(environ: Mapping[str, str]) -> float:
    """`PAGEWIRE_TOKEN_CACHE_TTL_S`: seconds a decrypted token may be reused (0: never)."""
    return env_float(environ, "TOKEN_CACHE_TTL_S", DEFAULT_CACHE_TTL_S)


class TokensPeerError(PagewireError):
    """The tokens service failed in a way with no better mapping; reported as INTERNAL."""


def domain_error(exc: grpc.aio.AioRpcError, peer: str = "tokens") -> PagewireError:
    """A tokens-service failure as the caller's domain error (details never hold a token)."""
    code = exc.code()
    details = exc.details() or ""
    if code in _UNREACHABLE:
        return Unavailable(f"{peer} service unavailable ({code.name})")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The peer's message is "field: problem"; keep the field for the caller.
        name, _, problem = details.partition(": ")
        return InvalidArgument(name or "request", problem or details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(details)
    if code == grpc.StatusCode.DATA_LOSS:
        return DataLoss(details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"{peer} service refused the call: {details}")
    return TokensPeerError(f"{peer} service failed ({code.name})")


class TokensClient:
    """PutToken, DecryptToken, DeleteToken and MarkTokenInvalid, each with a deadline."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = tokens_pb2_grpc.TokensServiceStub(channel)
        self._timeout = timeout_s

    @staticmethod
    def _page(platform: str, page_id: str) -> tokens_pb2.PageRef:
        return tokens_pb2.PageRef(platform=events_pb2.Platform.Value(platform), page_id=page_id)

    async def put(self, platform: str, page_id: str, token: Secret, expires_at_ms: int = 0) -> str:
        """Stores the token (ACTIVE again); returns the key id that sealed it."""
        request = tokens_pb2.PutTokenRequest(
            page=self._page(platform, page_id), token=token.get(), expires_at_ms=expires_at_ms
        )
        try:
            response = await self._stub.PutToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise domain_error(exc) from None
        return response.key_id

    async def decrypt(
        self, platform: str, page_id: str, on_behalf_of: str = ""
    ) -> tuple[Secret, str]:
        """The page's token (masked in repr) and its status name; `on_behalf_of` names, in
        the vault's audit, the identity whose call this decrypt serves."""
        request = tokens_pb2.DecryptTokenRequest(
            page=self._page(platform, page_id), on_behalf_of=on_behalf_of
        )
        try:
            response = await self._stub.DecryptToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise domain_error(exc) from None
        return Secret(response.token), _STATUS_NAME.get(response.status, "UNKNOWN")

    async def delete(self, platform: str, page_id: str) -> bool:
        request = tokens_pb2.DeleteTokenRequest(page=self._page(platform, page_id))
        try:
            response = await self._stub.DeleteToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise domain_error(exc) from None
        return response.deleted

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None:
        request = tokens_pb2.MarkTokenInvalidRequest(
            page=self._page(platform, page_id),
            reason=reason,
            graph_code=code,
            graph_subcode=subcode,
        )
        try:
            await self._stub.MarkTokenInvalid(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise domain_error(exc) from None


class Vault(Protocol):
    """What TokenCache wraps: TokensClient, or any client with these methods."""

    async def put(self, platform: str, page_id: str, token: Secret, *args: Any) -> str: ...

    async def decrypt(self, platform: str, page_id: str) -> tuple[Secret, str]: ...

    async def delete(self, platform: str, page_id: str) -> bool: ...

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None: ...


@dataclass
class _Entry:
    token: Secret
    status: str
    expires: float


class TokenCache:
    """Decrypted tokens by (platform, page id) for `ttl_s`, in front of a tokens client.

    Bounded (least recently used go first), one DecryptToken per page at a time
    (concurrent misses share it), and dropped for a page on every put, delete and
    mark_invalid made through it. Every other attribute is the wrapped client's.
    """

    def __init__(
        self,
        inner: Vault,
        ttl_s: float = DEFAULT_CACHE_TTL_S,
        *,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        # Bumped on every drop, so a decrypt in flight across a drop does not cache a stale token.
        self._generation: dict[tuple[str, str], int] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[tuple[Secret, str]]] = {}

    def __repr__(self) -> str:
        return f"TokenCache(ttl_s={self._ttl}, entries={len(self._entries)})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never forward private names (and no recursion before init)
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __len__(self) -> int:
        return len(self._entries)

    def forget(self, platform: str, page_id: str) -> None:
        """Drops the page's cached token (it changed, was deleted or was refused by Graph)."""
        key = (platform, page_id)
        self._entries.pop(key, None)
        self._generation[key] = self._generation.get(key, 0) + 1

    async def put(self, platform: str, page_id: str, token: Secret, *args: Any) -> str:
        self.forget(platform, page_id)
        try:
            return await self._inner.put(platform, page_id, token, *args)
        finally:
            self.forget(platform, page_id)

    async def delete(self, platform: str, page_id: str) -> bool:
        self.forget(platform, page_id)
        try:
            return await self._inner.delete(platform, page_id)
        finally:
            self.forget(platform, page_id)

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None:
        self.forget(platform, page_id)
        try:
            await self._inner.mark_invalid(platform, page_id, reason, code, subcode)
        finally:
            self.forget(platform, page_id)

    async def status(self, platform: str, page_id: str) -> Any:
        """The wrapped client's status call, untouched (it never carries the token)."""
        return await self._inner.status(platform, page_id)  # type: ignore[attr-defined]

    async def decrypt(
        self, platform: str, page_id: str, on_behalf_of: str = ""
    ) -> tuple[Secret, str]:
        """The page's token and status, from memory when fresh (a cache hit decrypts
        nothing, so the audit then has no record for `on_behalf_of`)."""
        key = (platform, page_id)
        cached = self._entries.get(key)
        if cached is not None:
            if cached.expires > self._clock():
                self._entries.move_to_end(key)
                return cached.token, cached.status
            del self._entries[key]
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The first caller gave up.
                return await self._inner.decrypt(platform, page_id, on_behalf_of)
        future: asyncio.Future[tuple[Secret, str]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        generation = self._generation.get(key, 0)
        try:
            result = await self._inner.decrypt(platform, page_id, on_behalf_of)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(result)
        if self._ttl > 0 and self._generation.get(key, 0) == generation:
            self._entries[key] = _Entry(result[0], result[1], self._clock() + self._ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return result
