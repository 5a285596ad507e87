"""The subscriptions service's pieces wired together once: the composition root and the
tests use this.

Connections (connect, move, disconnect, with the router's notices) and the history
import it asks for; reconcile, gap repair and the details of `pages list` beside them;
one servicer over all of them. Graph calls share one client and, for the
Conversations API, one per-page pace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.graph import ConversationsApi, GraphClient, PagesApi
from pagewire.kit.timeutil import now_ms
from services.subscriptions.config import SubscriptionsSettings
from services.subscriptions.connections import Connections
from services.subscriptions.details import DetailsReader
from services.subscriptions.gaps import GapRepair
from services.subscriptions.history import HistoryImporter, Pacer
from services.subscriptions.ports import Router, Vault
from services.subscriptions.reconcile import Reconciler
from services.subscriptions.server import SubscriptionsServiceServicer


@dataclass(frozen=True)
class SubscriptionsParts:
    """Everything one subscriptions process runs."""

    connections: Connections
    reconciler: Reconciler
    history: HistoryImporter
    gaps: GapRepair
    servicer: SubscriptionsServiceServicer


def assemble(
    sessions: async_sessionmaker[AsyncSession],
    settings: SubscriptionsSettings,
    *,
    vault: Vault,
    graph: GraphClient,
    router: Router,
    app_ids: Mapping[str, str] | None = None,
    clock_ms: Callable[[], int] = now_ms,
) -> SubscriptionsParts:
    pages_api = PagesApi(graph)
    conversations_api = ConversationsApi(graph)
    pacer = Pacer(settings.history.calls_per_second)
    history = HistoryImporter(
        sessions,
        vault=vault,
        api=conversations_api,
        router=router,
        pacer=pacer,
        settings=settings.history,
    )
    gaps = GapRepair(
        sessions,
        vault=vault,
        api=conversations_api,
        router=router,
        pacer=pacer,
        settings=settings.history,
    )
    connections = Connections(
        sessions,
        vault=vault,
        graph=pages_api,
        router=router,
        default_fields=settings.default_fields,
        app_ids=settings.app_ids if app_ids is None else app_ids,
        history_days=settings.history.days,
        history_wake=history.wake,
    )
    reconciler = Reconciler(
        sessions,
        vault=vault,
        graph=pages_api,
        subscriber=connections.subscriber,
        settings=settings.reconcile,
        clock_ms=clock_ms,
    )
    details = DetailsReader(vault, router, timeout_s=settings.rpc_timeout_s)
    servicer = SubscriptionsServiceServicer(connections, reconciler, details, history, gaps)
    return SubscriptionsParts(connections, reconciler, history, gaps, servicer)
