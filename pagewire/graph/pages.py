"""Page-level Graph calls: `subscribed_apps`, `/me/accounts`, Instagram token refresh.

Ids in paths are validated digits by the callers, so they cannot alter a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pagewire.graph.client import FACEBOOK, INSTAGRAM, GraphClient
from pagewire.graph.errors import GraphError
from pagewire.kit.settings import Secret

ACCOUNTS_PAGE_SIZE = 100
MAX_ACCOUNT_PAGES = 50  # 5,000 Pages; a user with more is cut off, not looped forever


@dataclass(frozen=True)
class SubscribedApp:
    """One app subscribed to a page, as `GET subscribed_apps` lists it."""

    app_id: str
    name: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class ManagedPage:
    """A Page the user can manage, with its Page token (masked in repr)."""

    page_id: str
    name: str
    tasks: tuple[str, ...]
    category: str
    token: Secret = field(repr=False)


@dataclass(frozen=True)
class RefreshedToken:
    """A refreshed Instagram Login token and how long it lives."""

    token: Secret = field(repr=False)
    expires_in_s: int = 0


def _require_success(body: Any) -> None:
    # Messenger answers "true" as a string, Instagram Login a boolean (fixtures/graph/README).
    if not (isinstance(body, dict) and body.get("success") in (True, "true")):
        raise GraphError(http_status=200, message="Graph did not confirm success")


def _data(body: Any) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise GraphError(http_status=200, message="response has no 'data' list")
    return [item for item in data if isinstance(item, dict)]


class PagesApi:
    """The page lifecycle's Graph calls, over one shared GraphClient."""

    def __init__(self, client: GraphClient) -> None:
        self.client = client

    async def subscribe(
        self, platform: str, page_id: str, token: Secret, fields: Sequence[str]
    ) -> None:
        """Subscribes the app to the page's webhook `fields` (POST subscribed_apps)."""
        body = await self.client.request(
            "POST",
            platform,
            f"{page_id}/subscribed_apps",
            token=token,
            data={"subscribed_fields": ",".join(fields)},
            object_id=page_id,
        )
        _require_success(body)

    async def unsubscribe(self, platform: str, page_id: str, token: Secret) -> None:
        """Removes the app's webhook subscription from the page (DELETE subscribed_apps)."""
        body = await self.client.request(
            "DELETE", platform, f"{page_id}/subscribed_apps", token=token, object_id=page_id
        )
        _require_success(body)

    async def subscribed_apps(
        self, platform: str, page_id: str, token: Secret
    ) -> list[SubscribedApp]:
        """Apps subscribed to the page (empty once Meta disabled ours)."""
        body = await self.client.request(
            "GET", platform, f"{page_id}/subscribed_apps", token=token, object_id=page_id
        )
        apps = []
        for item in _data(body):
            fields = item.get("subscribed_fields")
            apps.append(
                SubscribedApp(
                    app_id=str(item.get("id") or ""),
                    name=str(item.get("name") or ""),
                    fields=tuple(str(f) for f in fields) if isinstance(fields, list) else (),
                )
            )
        return apps

    async def managed_pages(self, user_token: Secret) -> list[ManagedPage]:
        """Every Page the user token can manage (`GET /me/accounts`, all result pages).

        Follows the `after` cursor rather than `paging.next`: that URL carries
        the token in its query and names a host we did not choose.
        """
        pages: list[ManagedPage] = []
        after = ""
        for _ in range(MAX_ACCOUNT_PAGES):
            params = {
                "fields": "id,name,access_token,tasks,category",
                "limit": str(ACCOUNTS_PAGE_SIZE),
            }
            if after:
                params["after"] = after
            body = await self.client.request(
                "GET", FACEBOOK, "me/accounts", token=user_token, params=params
            )
            for item in _data(body):
                page_id, token = str(item.get("id") or ""), item.get("access_token")
                if not page_id.isdigit() or not isinstance(token, str) or not token:
                    continue  # no Page token: the user cannot act for this Page
                tasks = item.get("tasks")
                pages.append(
                    ManagedPage(
                        page_id=page_id,
                        name=str(item.get("name") or ""),
                        tasks=tuple(str(t) for t in tasks) if isinstance(tasks, list) else (),
                        category=str(item.get("category") or ""),
                        token=Secret(token),
                    )
                )
            paging = body.get("paging") if isinstance(body, dict) else None
            cursors = paging.get("cursors") if isinstance(paging, dict) else None
            after = str(cursors.get("after") or "") if isinstance(cursors, dict) else ""
            if not (isinstance(paging, dict) and paging.get("next") and after):
                break
        return pages

    async def refresh_instagram_token(self, account_id: str, token: Secret) -> RefreshedToken:
        """Extends a long-lived Instagram Login token for another 60 days."""
        body = await self.client.request(
            "GET",
            INSTAGRAM,
            "refresh_access_token",
            token=token,
            params={"grant_type": "ig_refresh_token"},
            object_id=account_id,
            versioned=False,
        )
        new = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(new, str) or not new:
            raise GraphError(http_status=200, message="refresh answered without an access_token")
        try:
            expires_in = int(body.get("expires_in") or 0)
        except (TypeError, ValueError):
            expires_in = 0
        return RefreshedToken(Secret(new), max(0, expires_in))
