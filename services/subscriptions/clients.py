"""gRPC clients of the tokens and router services, speaking in domain errors.

The domain (connections.py) sees only these methods and `pagewire.kit.errors`;
every call carries a timeout, and a peer that cannot be reached becomes
`Unavailable` with a message that names the peer, never the token.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from pagewire.kit.errors import InvalidArgument, PagewireError
from pagewire.kit.settings import Secret
from pagewire.kit.tokens_client import _STATUS_NAME, domain_error
from pagewire.kit.tokens_client import TokensClient as KitTokensClient
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc, tokens_pb2
from services.subscriptions.ports import TokenState


class TokensClient(KitTokensClient):
    """The kit's tokens client, plus GetTokenStatus and ConnectPage's field name."""

    async def put(self, platform: str, page_id: str, token: Secret, expires_at_ms: int = 0) -> str:
        """Stores the token (ACTIVE again) with its expiry; returns the key id that sealed it."""
        try:
            return await super().put(platform, page_id, token, expires_at_ms)
        except InvalidArgument as error:
            if error.field == "token":
                # Name the field as the caller of ConnectPage knows it.
                raise InvalidArgument("page_token", str(error).partition(": ")[2]) from None
            raise

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


def _domain_error(peer: str, exc: grpc.aio.AioRpcError) -> PagewireError:
    return domain_error(exc, peer)


def _platform(name: str) -> int:
    return events_pb2.Platform.Value(name)


class RouterClient:
    """RouteParked, PageDisconnected, GetPageActivity, PurgePage and Ingest (history and gap
    repair), each with a deadline."""

    def __init__(
        self, channel: grpc.aio.Channel, timeout_s: float, ingest_timeout_s: float = 10.0
    ) -> None:
        self._stub = router_pb2_grpc.RouterServiceStub(channel)
        self._timeout = timeout_s
        self._ingest_timeout = ingest_timeout_s

    async def ingest(self, events: Sequence[events_pb2.Event]) -> tuple[int, int]:
        """Appends imported events to the router's log; (new to it, already there) once
        committed."""
        request = router_pb2.IngestRequest(events=list(events))
        try:
            response = await self._stub.Ingest(
                request, timeout=self._ingest_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("router", exc) from None
        return response.stored, response.duplicates

    async def route_parked(
        self, platform: str, page_id: str, account_id: str, version: int = 0
    ) -> int:
        """Tells the router the page's account; returns how many parked events it will
        now apply."""
        request = router_pb2.RouteParkedRequest(
            platform=_platform(platform), page_id=page_id, account_id=account_id, version=version
        )
        try:
            response = await self._stub.RouteParked(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("router", exc) from None
        return response.routed

    async def page_disconnected(self, platform: str, page_id: str, version: int) -> bool:
        """Tells the router the page is no longer connected; False if it had newer news."""
        request = router_pb2.PageDisconnectedRequest(
            platform=_platform(platform), page_id=page_id, version=version
        )
        try:
            response = await self._stub.PageDisconnected(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _domain_error("router", exc) from None
        return response.applied

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
