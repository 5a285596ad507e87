"""gRPC clients of the tokens and router services, speaking in domain errors.

The domain (connections.py) sees only these methods and `pagewire.kit.errors`;
every call carries a timeout, and a peer that cannot be reached becomes
`Unavailable` with a message that names the peer, never the token.
"""

from __future__ import annotations

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
from pagewire.kit.settings import Secret
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc, tokens_pb2, tokens_pb2_grpc
from services.subscriptions.ports import TokenState

_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_STATUS_NAME = {tokens_pb2.ACTIVE: "ACTIVE", tokens_pb2.REAUTH_REQUIRED: "REAUTH_REQUIRED"}


class PeerError(PagewireError):
    """The peer failed in a way with no better mapping; reported as INTERNAL."""


def _domain_error(peer: str, exc: grpc.aio.AioRpcError) -> PagewireError:
    code = exc.code()
    details = exc.details() or ""
    if code in _UNREACHABLE:
        return Unavailable(f"{peer} service unavailable ({code.name})")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The peer's message is "field: problem"; keep the field for the caller.
        field, _, problem = details.partition(": ")
        return InvalidArgument(field or "request", problem or details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(details)
    if code == grpc.StatusCode.DATA_LOSS:
        return DataLoss(details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"{peer} service refused the call: {details}")
    return PeerError(f"{peer} service failed ({code.name})")


def _platform(name: str) -> int:
    return events_pb2.Platform.Value(name)


class TokensClient:
    """PutToken, DecryptToken, DeleteToken and MarkTokenInvalid with a deadline each."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = tokens_pb2_grpc.TokensServiceStub(channel)
        self._timeout = timeout_s

    @staticmethod
    def _page(platform: str, page_id: str) -> tokens_pb2.PageRef:
        return tokens_pb2.PageRef(platform=_platform(platform), page_id=page_id)

    async def put(self, platform: str, page_id: str, token: Secret, expires_at_ms: int = 0) -> str:
        """Stores the token (ACTIVE again) with its expiry; returns the key id that sealed it."""
        request = tokens_pb2.PutTokenRequest(
            page=self._page(platform, page_id), token=token.get(), expires_at_ms=expires_at_ms
        )
        try:
            response = await self._stub.PutToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            error = _domain_error("tokens", exc)
            if isinstance(error, InvalidArgument) and error.field == "token":
                # Name the field as the caller of ConnectPage knows it.
                raise InvalidArgument("page_token", str(error).partition(": ")[2]) from None
            raise error from None
        return response.key_id

    async def decrypt(self, platform: str, page_id: str) -> tuple[Secret, str]:
        """The page's token (masked in repr) and its status name."""
        request = tokens_pb2.DecryptTokenRequest(page=self._page(platform, page_id))
        try:
            response = await self._stub.DecryptToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("tokens", exc) from None
        return Secret(response.token), _STATUS_NAME.get(response.status, "UNKNOWN")

    async def delete(self, platform: str, page_id: str) -> bool:
        request = tokens_pb2.DeleteTokenRequest(page=self._page(platform, page_id))
        try:
            response = await self._stub.DeleteToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("tokens", exc) from None
        return response.deleted

    async def status(self, platform: str, page_id: str) -> TokenState | None:
        """What the vault knows of the page's token (never the token); None when none stored."""
        request = tokens_pb2.GetTokenStatusRequest(page=self._page(platform, page_id))
        try:
            response = await self._stub.GetTokenStatus(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _domain_error("tokens", exc) from None
        return TokenState(
            status=_STATUS_NAME.get(response.status, "UNKNOWN"),
            reason=response.reason,
            graph_code=response.graph_code,
            graph_subcode=response.graph_subcode,
            updated_at_ms=response.updated_at_ms,
            expires_at_ms=response.expires_at_ms,
        )

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
            raise _domain_error("tokens", exc) from None


class RouterClient:
    """RouteParked, GetPageActivity and PurgePage, each with a deadline."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = router_pb2_grpc.RouterServiceStub(channel)
        self._timeout = timeout_s

    async def route_parked(self, platform: str, page_id: str) -> int:
        """Routes the events parked for the page; returns how many were stored."""
        request = router_pb2.RouteParkedRequest(platform=_platform(platform), page_id=page_id)
        try:
            response = await self._stub.RouteParked(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("router", exc) from None
        return response.routed

    async def page_activity(self, platform: str, page_id: str, timeout_s: float) -> dict[str, int]:
        """The router's last event and counts for the page."""
        request = router_pb2.GetPageActivityRequest(platform=_platform(platform), page_id=page_id)
        try:
            response = await self._stub.GetPageActivity(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("router", exc) from None
        return {
            "last_event_ms": response.last_event_ms,
            "last_stored_at_ms": response.last_stored_at_ms,
            "conversations": response.conversations,
            "messages": response.messages,
            "parked": response.parked,
        }

    async def purge_page(self, platform: str, page_id: str) -> dict[str, int]:
        """Deletes everything the router stored for the page; returns what was deleted."""
        request = router_pb2.PurgePageRequest(platform=_platform(platform), page_id=page_id)
        try:
            response = await self._stub.PurgePage(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("router", exc) from None
        return {
            "conversations": response.conversations,
            "messages": response.messages,
            "parked": response.parked,
        }
