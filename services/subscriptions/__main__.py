"""Composition root of the subscriptions service: `python -m services.subscriptions`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pagewire.graph import GraphClient
from pagewire.kit import telemetry
from pagewire.kit.authz import Policy
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.grpcserver import serve_until_signal, start_server
from pagewire.kit.logs import setup_logging
from pagewire.kit.metrics import metrics_port, refreshing, serve_metrics
from pagewire.kit.runner import run
from pagewire.kit.settings import current_environ
from pagewire.kit.tls import GrpcSecurity
from pagewire.kit.tokens_client import TokenCache, cache_ttl_from_env
from services.subscriptions.access import SUBSCRIPTIONS_ACCESS, access_settings
from services.subscriptions.assembly import assemble
from services.subscriptions.clients import RouterClient, TokensClient
from services.subscriptions.config import SubscriptionsSettings
from services.subscriptions.metrics import refresh_pages
from services.subscriptions.server import SERVICE_NAME, register

log = logging.getLogger("pagewire.subscriptions")
# How often the pagewire_pages gauge is read from the database.
METRICS_REFRESH_S = 30.0


async def main() -> None:
    settings = SubscriptionsSettings.from_env(current_environ())
    security = GrpcSecurity.from_env(current_environ(), "subscriptions")
    security.require_safe_bind(settings.host)
    access = access_settings(current_environ())
    scrape_port = metrics_port(current_environ())
    setup_logging("subscriptions", settings.log_level)
    tracing = telemetry.setup("subscriptions", current_environ())
    security.announce(log)
    log.info("authorization", extra=access.describe())
    engine = create_engine(settings.database_url, "subscriptions")
    tokens_channel = security.channel(settings.tokens_target, "tokens")
    router_channel = security.channel(settings.router_target, "router")
    graph = GraphClient(settings.graph, user_agent="pagewire-subscriptions")
    vault = TokenCache(
        TokensClient(tokens_channel, settings.rpc_timeout_s), cache_ttl_from_env(current_environ())
    )
    router = RouterClient(
        router_channel, settings.route_parked_timeout_s, settings.ingest_timeout_s
    )
    parts = assemble(sessions(engine), settings, vault=vault, graph=graph, router=router)
    if not settings.graph.app_id:
        log.warning(
            "PAGEWIRE_APP_ID is not set: subscription checks count every app subscribed to a"
            " page as ours; set it to the Meta app id"
        )
    log.info(
        "graph api",
        extra={
            "graph_url": settings.graph.url,
            "instagram_graph_url": settings.graph.instagram_url,
            "graph_version": settings.graph.version,
            "appsecret_proof": settings.graph.appsecret_proof,
            "reconcile_interval_s": settings.reconcile.interval_s,
            "history_calls_per_second": settings.history.calls_per_second,
            "gap_repair_interval_s": settings.history.gap_interval_s,
            "tokens": settings.tokens_target,
            "router": settings.router_target,
        },
    )

    stop = asyncio.Event()
    loop: asyncio.Task[None] | None = None
    notices: asyncio.Task[None] | None = None
    importing: asyncio.Task[None] | None = None
    repairing: asyncio.Task[None] | None = None

    async def stop_reconcile() -> None:
        stop.set()
        for task in (loop, notices, importing, repairing):
            if task is not None:
                # A run in progress gets a moment to record its results, then is cancelled.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, settings.grace_s)

    async def close_channels() -> None:
        await tokens_channel.close()
        await router_channel.close()

    # Closed in reverse: the reconcile loop first, while its clients still work; the
    # spans of the shutdown itself are flushed last.
    closers = [tracing.shutdown, engine.dispose, graph.aclose, close_channels, stop_reconcile]
    if scrape_port:
        closers.append(await serve_metrics(settings.host, scrape_port))
        closers.append(refreshing(lambda: refresh_pages(sessions(engine)), METRICS_REFRESH_S))
    service = await start_server(
        names=[SERVICE_NAME],
        register=register(parts.servicer),
        access=Policy.build(
            [SUBSCRIPTIONS_ACCESS], access, allow_unauthenticated=security.insecure
        ),
        host=settings.host,
        port=settings.port,
        closers=closers,
        credentials=security.server_credentials(),
        health_port=security.health_port,
    )
    notices = asyncio.create_task(
        parts.connections.notices.loop(stop, settings.notice_retry_s), name="router notices"
    )
    if settings.reconcile.interval_s > 0:
        loop = asyncio.create_task(parts.reconciler.loop(stop), name="reconcile")
    importing = asyncio.create_task(parts.history.loop(stop), name="history imports")
    if settings.history.gap_interval_s > 0:
        repairing = asyncio.create_task(parts.gaps.loop(stop), name="gap repair")
    await serve_until_signal(service, drain=settings.drain_s, grace=settings.grace_s)


if __name__ == "__main__":
    run(main, "subscriptions")
