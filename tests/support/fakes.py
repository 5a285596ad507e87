"""In-process stand-ins for a neighbouring service, served by the production gRPC bootstrap."""

from __future__ import annotations

import grpc

from pagewire.kit.authz import Policy
from pagewire.kit.grpcserver import GrpcService, start_server
from pagewire.kit.settings import Secret
from pagewire.proto import events_pb2, subscriptions_pb2, subscriptions_pb2_grpc


class FakeSubscriptions(subscriptions_pb2_grpc.SubscriptionsServiceServicer):
    """Answers GetPage from a dict the test fills: (platform, page id) → account."""

    def __init__(self) -> None:
        self.pages: dict[tuple[int, str], str] = {}
        self.statuses: dict[tuple[int, str], int] = {}
        self.human_agent: dict[tuple[int, str], bool] = {}
        self.get_page_calls = 0
        # True: every GetPage fails UNAVAILABLE (subscriptions down).
        self.down = False

    def connect(
        self,
        page_id: str,
        account: str,
        platform: int = events_pb2.FACEBOOK,
        status: int = subscriptions_pb2.SUBSCRIBED,
        human_agent: bool = False,
    ) -> None:
        self.pages[(platform, page_id)] = account
        self.statuses[(platform, page_id)] = status
        self.human_agent[(platform, page_id)] = human_agent

    async def GetPage(self, request, context):  # type: ignore[no-untyped-def]
        self.get_page_calls += 1
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "subscriptions is down")
        account = self.pages.get((request.platform, request.page_id))
        if account is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"page {request.page_id} not connected")
        return subscriptions_pb2.GetPageResponse(
            page=subscriptions_pb2.Page(
                platform=request.platform,
                page_id=request.page_id,
                account_id=account,
                status=self.statuses[(request.platform, request.page_id)],
                human_agent=self.human_agent[(request.platform, request.page_id)],
            )
        )


async def serve_fake_subscriptions(fake: FakeSubscriptions) -> GrpcService:
    return await start_server(
        names=["pagewire.subscriptions.v1.SubscriptionsService"],
        register=lambda s: subscriptions_pb2_grpc.add_SubscriptionsServiceServicer_to_server(
            fake, s
        ),
        access=Policy.open(["pagewire.subscriptions.v1.SubscriptionsService"]),
    )


class StandInVault:
    """Stands in for the tokens service inside a router: one token for every page, and a
    record of who it was decrypted for and of the re-authorization marks."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.invalid: list[tuple[int, int]] = []
        self.on_behalf_of: list[str] = []

    async def decrypt(
        self, platform: str, page_id: str, on_behalf_of: str = ""
    ) -> tuple[Secret, str]:
        self.on_behalf_of.append(on_behalf_of)
        return Secret(self._token), "ACTIVE"

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None:
        self.invalid.append((code, subcode))
