"""The TokensService servicer: validates requests, calls the vault, never echoes a token."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from pagewire.kit.errors import InvalidArgument
from pagewire.kit.settings import Secret
from pagewire.kit.validate import page_token, platform_and_page
from pagewire.proto import tokens_pb2, tokens_pb2_grpc
from services.tokens.vault import TokenVault

SERVICE_NAME = tokens_pb2.DESCRIPTOR.services_by_name["TokensService"].full_name

MAX_REASON_CHARS = 1000
_STATUS = {
    "ACTIVE": tokens_pb2.ACTIVE,
    "REAUTH_REQUIRED": tokens_pb2.REAUTH_REQUIRED,
}


def page_of(page: tokens_pb2.PageRef, has_page: bool, field: str = "page") -> tuple[str, str]:
    """(platform name, page id) of a request's page, or InvalidArgument naming the field."""
    if not has_page:
        raise InvalidArgument(field, "is required")
    return platform_and_page(page.platform, page.page_id, prefix=f"{field}.")


def token_of(token: str) -> Secret:
    """The request's token, checked without ever putting it in a message."""
    return page_token(token, "token")


class TokensServiceServicer(tokens_pb2_grpc.TokensServiceServicer):
    """Every RPC of pagewire.tokens.v1.TokensService."""

    def __init__(self, vault: TokenVault) -> None:
        self._vault = vault

    async def PutToken(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.page, request.HasField("page"))
        token = token_of(request.token)
        if request.expires_at_ms < 0:
            raise InvalidArgument("expires_at_ms", "must be 0 (never) or a time in ms")
        key_id = await self._vault.put(platform, page_id, token, request.expires_at_ms)
        return tokens_pb2.PutTokenResponse(status=tokens_pb2.ACTIVE, key_id=key_id)

    async def DecryptToken(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.page, request.HasField("page"))
        decrypted = await self._vault.decrypt(platform, page_id)
        return tokens_pb2.DecryptTokenResponse(
            token=decrypted.token.get(), status=_STATUS[decrypted.status]
        )

    async def DeleteToken(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.page, request.HasField("page"))
        deleted = await self._vault.delete(platform, page_id)
        return tokens_pb2.DeleteTokenResponse(deleted=deleted)

    async def GetTokenStatus(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.page, request.HasField("page"))
        info = await self._vault.status(platform, page_id)
        return tokens_pb2.GetTokenStatusResponse(
            status=_STATUS[info.status],
            reason=info.reason,
            key_id=info.key_id,
            graph_code=info.graph_code,
            graph_subcode=info.graph_subcode,
            created_at_ms=info.created_at_ms,
            updated_at_ms=info.updated_at_ms,
            expires_at_ms=info.expires_at_ms,
        )

    async def MarkTokenInvalid(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.page, request.HasField("page"))
        if len(request.reason) > MAX_REASON_CHARS:
            raise InvalidArgument("reason", f"is longer than {MAX_REASON_CHARS} characters")
        if request.graph_code < 0:
            raise InvalidArgument("graph_code", "must not be negative")
        if request.graph_subcode < 0:
            raise InvalidArgument("graph_subcode", "must not be negative")
        await self._vault.mark_invalid(
            platform,
            page_id,
            reason=request.reason or "marked invalid",
            graph_code=request.graph_code,
            graph_subcode=request.graph_subcode,
        )
        return tokens_pb2.MarkTokenInvalidResponse(status=tokens_pb2.REAUTH_REQUIRED)


def register(servicer: TokensServiceServicer) -> Callable[[grpc.aio.Server], None]:
    """The `register` argument of `start_server` for this servicer."""

    def add(server: grpc.aio.Server) -> None:
        tokens_pb2_grpc.add_TokensServiceServicer_to_server(servicer, server)

    return add
