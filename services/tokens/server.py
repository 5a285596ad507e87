"""The TokensService servicer: who calls, may it, validate, call the vault, never echo a token."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from pagewire.kit import telemetry
from pagewire.kit.authz import Policy
from pagewire.kit.errors import InvalidArgument, PagewireError
from pagewire.kit.principal import IDENTITY, current
from pagewire.kit.settings import Secret
from pagewire.kit.validate import page_token, platform_and_page
from pagewire.proto import events_pb2, tokens_pb2, tokens_pb2_grpc
from services.tokens import metrics
from services.tokens import vault as v
from services.tokens.access import SERVICE_NAME, Access
from services.tokens.keyring import KEY_ID
from services.tokens.sealing import FORMAT_CURRENT
from services.tokens.vault import TokenVault

__all__ = ["SERVICE_NAME", "TokensServiceServicer", "register"]

log = logging.getLogger("pagewire.tokens")

MAX_REASON_CHARS = 1000
MAX_AUDIT_LIMIT = 1000
_STATUS = {
    "ACTIVE": tokens_pb2.ACTIVE,
    "REAUTH_REQUIRED": tokens_pb2.REAUTH_REQUIRED,
}


def page_of(page: tokens_pb2.PageRef, has_page: bool, field: str = "page") -> tuple[str, str]:
    """(platform name, page id) of a request's page, or InvalidArgument naming the field."""
    if not has_page:
        raise InvalidArgument(field, "is required")
    platform, page_id = platform_and_page(page.platform, page.page_id, prefix=f"{field}.")
    telemetry.annotate(platform=platform.lower(), page_id=page_id)
    return platform, page_id


def token_of(token: str) -> Secret:
    """The request's token, checked without ever putting it in a message."""
    return page_token(token, "token")


def _audit_page(request: object) -> tuple[str, str]:
    """The request's page for an audit record of a refusal, or blanks when it is not valid."""
    page = getattr(request, "page", None)
    if page is None or not request.HasField("page"):  # type: ignore[attr-defined]
        return "", ""
    try:
        return platform_and_page(page.platform, page.page_id)
    except InvalidArgument:
        return "", ""


def _on_behalf_of(value: str) -> str:
    """The identity a decrypting service acts for (audit only; empty: itself)."""
    if value and not IDENTITY.fullmatch(value):
        raise InvalidArgument("on_behalf_of", "must be a certificate identity (1-128 characters)")
    return value


def _key_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not KEY_ID.fullmatch(value):
        raise InvalidArgument(field, "must be 1-64 letters, digits, '.', '_' or '-'")
    return value


# The audit log's action for each RPC, also for refusals.
_ACTIONS = {
    "PutToken": v.PUT,
    "DecryptToken": v.DECRYPT,
    "DeleteToken": v.DELETE,
    "GetTokenStatus": "STATUS",
    "MarkTokenInvalid": v.MARK_INVALID,
    "RotateKeys": v.ROTATE,
    "ListKeys": "LIST_KEYS",
    "RemoveKey": v.REMOVE_KEY,
    "ListAudit": "LIST_AUDIT",
}


def _caller() -> str:
    """The audited name of the caller (the authorization interceptor let it in)."""
    return current().identity


class TokensServiceServicer(tokens_pb2_grpc.TokensServiceServicer):
    """Every RPC of pagewire.tokens.v1.TokensService; who may call what is TOKENS_ACCESS."""

    def __init__(self, vault: TokenVault, access: Access | None = None) -> None:
        self._vault = vault
        self._access = access or Access()

    def policy(self) -> Policy:
        """The server's authorization: the access table, refusals in the audit log."""
        return self._access.policy(audit=self._refused)

    async def _refused(self, caller: str, method: str, reason: str, request: object) -> None:
        """A refused call, recorded with the page its request named."""
        if method == "DecryptToken":
            metrics.DECRYPT_CALLS.labels(caller, "PERMISSION_DENIED").inc()
        platform, page_id = _audit_page(request)
        await self._vault.record(
            caller,
            _ACTIONS.get(method, method.upper()),
            platform,
            page_id,
            "PERMISSION_DENIED",
            reason,
        )

    async def PutToken(self, request, context):  # type: ignore[no-untyped-def]
        caller = _caller()
        platform, page_id = page_of(request.page, request.HasField("page"))
        token = token_of(request.token)
        if request.expires_at_ms < 0:
            raise InvalidArgument("expires_at_ms", "must be 0 (never) or a time in ms")
        key_id = await self._vault.put(
            platform, page_id, token, request.expires_at_ms, caller=caller
        )
        return tokens_pb2.PutTokenResponse(status=tokens_pb2.ACTIVE, key_id=key_id)

    async def DecryptToken(self, request, context):  # type: ignore[no-untyped-def]
        caller = _caller()
        outcome = "INTERNAL"
        try:
            platform, page_id = page_of(request.page, request.HasField("page"))
            on_behalf_of = _on_behalf_of(request.on_behalf_of)
            telemetry.annotate(caller=caller)
            decrypted = await self._vault.decrypt(
                platform, page_id, caller=caller, on_behalf_of=on_behalf_of
            )
            outcome = "OK"
        except PagewireError as exc:
            outcome = exc.status
            raise
        finally:
            metrics.DECRYPT_CALLS.labels(caller, outcome).inc()
            telemetry.annotate(outcome=outcome)
        return tokens_pb2.DecryptTokenResponse(
            token=decrypted.token.get(), status=_STATUS[decrypted.status]
        )

    async def DeleteToken(self, request, context):  # type: ignore[no-untyped-def]
        caller = _caller()
        platform, page_id = page_of(request.page, request.HasField("page"))
        deleted = await self._vault.delete(platform, page_id, caller=caller)
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
            format_version=info.format_version,
        )

    async def MarkTokenInvalid(self, request, context):  # type: ignore[no-untyped-def]
        caller = _caller()
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
            caller=caller,
        )
        return tokens_pb2.MarkTokenInvalidResponse(status=tokens_pb2.REAUTH_REQUIRED)

    async def RotateKeys(self, request, context):  # type: ignore[no-untyped-def]
        caller = _caller()
        if request.generate_key and request.new_key_id:
            raise InvalidArgument("new_key_id", "must be empty with generate_key")
        if not request.generate_key:
            _key_id(request.new_key_id, "new_key_id")
        if request.batch_size < 0 or request.batch_size > v.MAX_BATCH:
            raise InvalidArgument("batch_size", f"must be 0 (default) to {v.MAX_BATCH}")
        rotation = await self._vault.rotate(
            request.new_key_id,
            generate=request.generate_key,
            batch_size=request.batch_size or v.DEFAULT_BATCH,
            caller=caller,
        )
        return tokens_pb2.RotateKeysResponse(
            previous_primary_key_id=rotation.previous_primary,
            primary_key_id=rotation.primary,
            rewrapped=rotation.rewrapped,
            failed=rotation.failed,
            failed_pages=[
                tokens_pb2.PageRef(platform=events_pb2.Platform.Value(p), page_id=page)
                for p, page in rotation.failed_pages
            ],
            key_ring_file_updated=rotation.key_ring_file_updated,
        )

    async def ListKeys(self, request, context):  # type: ignore[no-untyped-def]
        report = await self._vault.keys()
        return tokens_pb2.ListKeysResponse(
            primary_key_id=report.primary,
            format_version=FORMAT_CURRENT,
            keys=[
                tokens_pb2.KeyUsage(
                    key_id=k.key_id,
                    primary=k.primary,
                    in_key_ring=k.in_key_ring,
                    tokens=k.tokens,
                    legacy_format_tokens=k.legacy_tokens,
                    retired=k.retired,
                    retired_at_ms=k.retired_at_ms,
                )
                for k in report.keys
            ],
        )

    async def RemoveKey(self, request, context):  # type: ignore[no-untyped-def]
        caller = _caller()
        key_id = _key_id(request.key_id, "key_id")
        removal = await self._vault.remove_key(key_id, caller=caller)
        return tokens_pb2.RemoveKeyResponse(
            key_ring_file_updated=removal.key_ring_file_updated, note=removal.note
        )

    async def ListAudit(self, request, context):  # type: ignore[no-untyped-def]
        platform = ""
        if request.platform != events_pb2.PLATFORM_UNSPECIFIED:
            platform, _ = platform_and_page(request.platform, "0")
        if request.page_id:
            platform_and_page(events_pb2.FACEBOOK, request.page_id)  # digits, like every page id
        if request.limit < 0 or request.limit > MAX_AUDIT_LIMIT:
            raise InvalidArgument("limit", f"must be 0 (default 50) to {MAX_AUDIT_LIMIT}")
        if request.before_id < 0:
            raise InvalidArgument("before_id", "must not be negative")
        items = await self._vault.audit(
            platform=platform,
            page_id=request.page_id,
            before_id=request.before_id,
            limit=request.limit or 50,
        )
        return tokens_pb2.ListAuditResponse(
            entries=[
                tokens_pb2.AuditEntry(
                    id=item.id,
                    at_ms=item.at_ms,
                    caller=item.caller,
                    action=item.action,
                    page=(
                        tokens_pb2.PageRef(
                            platform=events_pb2.Platform.Value(item.platform),
                            page_id=item.page_id,
                        )
                        if item.platform
                        else None
                    ),
                    outcome=item.outcome,
                    detail=item.detail,
                    on_behalf_of=item.on_behalf_of,
                )
                for item in items
            ]
        )


def register(servicer: TokensServiceServicer) -> Callable[[grpc.aio.Server], None]:
    """The `register` argument of `start_server` for this servicer."""

    def add(server: grpc.aio.Server) -> None:
        tokens_pb2_grpc.add_TokensServiceServicer_to_server(servicer, server)

    return add
