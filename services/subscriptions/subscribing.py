"""Subscribing a page and checking, with `GET subscribed_apps`, that Graph really has it.

A `{"success": true}` from POST is not proof: Meta disables a failing webhook
and unsubscribes the page without telling anyone, and Instagram applies the
app's fields, not ours. So every subscribe is confirmed by a GET that must
list our app (`PAGEWIRE_APP_ID`) with every field asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pagewire.graph import GraphError, SubscribedApp
from pagewire.kit.settings import Secret
from services.subscriptions.ports import Graph


@dataclass(frozen=True)
class Gap:
    """What `GET subscribed_apps` lacks compared with what the page should have."""

    app_missing: bool
    missing_fields: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.app_missing and not self.missing_fields

    def describe(self) -> str:
        if self.app_missing:
            return "app not subscribed to the page"
        return "fields missing: " + ",".join(self.missing_fields)


def gap_of(apps: Sequence[SubscribedApp], app_id: str, fields: Sequence[str]) -> Gap:
    """Compares Graph's list with the fields wanted.

    Without a configured app id every listed app counts as ours: correct when
    only Pagewire's app is installed on the page, which the log warns about.
    """
    ours = [app for app in apps if app.app_id == app_id] if app_id else list(apps)
    if not ours:
        return Gap(app_missing=True, missing_fields=tuple(fields))
    present = {name for app in ours for name in app.fields}
    return Gap(app_missing=False, missing_fields=tuple(f for f in fields if f not in present))


class Subscriber:
    """POST subscribed_apps, then GET to confirm; GET alone to check."""

    def __init__(self, graph: Graph, app_ids: Mapping[str, str]) -> None:
        self._graph = graph
        self._app_ids = app_ids

    async def gap(self, platform: str, page_id: str, token: Secret, fields: Sequence[str]) -> Gap:
        """What is missing now; raises GraphError when Graph cannot say."""
        apps = await self._graph.subscribed_apps(platform, page_id, token)
        return gap_of(apps, self._app_ids.get(platform, ""), fields)

    async def subscribe(
        self, platform: str, page_id: str, token: Secret, fields: Sequence[str]
    ) -> GraphError | None:
        """Subscribes and confirms; the error that stopped it, or None when confirmed."""
        try:
            await self._graph.subscribe(platform, page_id, token, fields)
            gap = await self.gap(platform, page_id, token, fields)
        except GraphError as exc:
            return exc
        if gap.ok:
            return None
        return GraphError(
            http_status=200,
            message=f"Graph accepted the subscription but GET subscribed_apps shows"
            f" {gap.describe()}",
        )
