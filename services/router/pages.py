"""Which account a page belongs to, asked of the subscriptions service and cached briefly."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from pagewire.kit.errors import Unavailable
from pagewire.proto import events_pb2, subscriptions_pb2, subscriptions_pb2_grpc


@dataclass(frozen=True)
class PageInfo:
    """What the router needs to know of a connected page."""

    account_id: str
    human_agent: bool


class PageDirectory:
    """Looks up page connections; only positive answers are cached.

    Not caching "not connected" means an event for a page connected a moment ago is
    routed, not parked. While subscriptions cannot be reached, the last known answer is
    served however old (a page moves only when someone says so, and RouteParked tells
    the router then): webhooks of connected pages keep flowing.
    """

    def __init__(
        self, stub: subscriptions_pb2_grpc.SubscriptionsServiceStub, ttl_s: float, timeout_s: float
    ) -> None:
        self._stub = stub
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._cache: dict[tuple[int, str], tuple[PageInfo, float]] = {}

    async def account_for(self, platform: int, page_id: str, *, fresh: bool = False) -> str | None:
        """The page's account id, or None when the page is not connected."""
        info = await self.page(platform, page_id, fresh=fresh)
        return info.account_id if info else None

    async def page(self, platform: int, page_id: str, *, fresh: bool = False) -> PageInfo | None:
        """The connected page, or None when it is not connected."""
        key = (platform, page_id)
        hit = self._cache.get(key)
        if not fresh and hit and hit[1] > time.monotonic():
            return hit[0]
        try:
            reply = await self._stub.GetPage(
                subscriptions_pb2.GetPageRequest(platform=platform, page_id=page_id),
                timeout=self._timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            # A page id subscriptions rejects (placeholders in test bodies) can never be
            # connected: park its events rather than answer 503 forever.
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                self._cache.pop(key, None)
                return None
            if hit is not None:
                return hit[0]  # stale is right here; refreshed on the next look-up
            raise Unavailable(
                f"subscriptions service unavailable ({exc.code().name}) for page {page_id}"
            ) from None
        info = PageInfo(reply.page.account_id, reply.page.human_agent)
        self._cache[key] = (info, time.monotonic() + self._ttl_s)
        return info

    def remember(self, platform: int, page_id: str, account_id: str) -> None:
        """What the page's connect just told the router (RouteParked carries it)."""
        old = self._cache.get((platform, page_id))
        human_agent = old[0].human_agent if old else False
        self._cache[(platform, page_id)] = (
            PageInfo(account_id, human_agent),
            time.monotonic() + self._ttl_s,
        )

    def forget(self, platform: int, page_id: str) -> None:
        self._cache.pop((platform, page_id), None)


def platform_name(platform: int) -> str:
    return events_pb2.Platform.Name(platform)
