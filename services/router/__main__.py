"""Composition root of the router: settings → clients → servicer → serve."""

from __future__ import annotations

import logging

from pagewire.graph.client import GraphClient
from pagewire.graph.config import GraphSettings
from pagewire.kit import telemetry
from pagewire.kit.authz import Policy
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.grpcserver import serve_until_signal, start_server
from pagewire.kit.logs import setup_logging
from pagewire.kit.metrics import metrics_port, serve_metrics
from pagewire.kit.runner import run
from pagewire.kit.settings import current_environ
from pagewire.kit.tls import GrpcSecurity
from pagewire.kit.tokens_client import TokenCache, TokensClient, cache_ttl_from_env
from pagewire.proto import router_pb2_grpc, subscriptions_pb2_grpc
from services.router.access import ROUTER_ACCESS, access_settings
from services.router.apply import ApplySettings
from services.router.assembly import build_router
from services.router.config import RouterSettings
from services.router.feed import FeedNotifier
from services.router.moderation import CommentActions
from services.router.mutex import ConversationLocks, LocalLocks, RedisLocks, redis_client
from services.router.pages import PageDirectory
from services.router.profiles import ProfileFetcher
from services.router.readiness import router_watcher
from services.router.send import Sender
from services.router.server import SERVICE_NAME

log = logging.getLogger("pagewire.router")


def build_locks(settings: RouterSettings) -> ConversationLocks:
    """Redis locks when a Redis URL is set; otherwise in-process, and said so."""
    if settings.redis_url:
        return RedisLocks(
            redis_client(settings.redis_url, settings.redis_timeout_s),
            settings.redis_prefix,
            settings.lock_ttl_ms,
            settings.lock_wait_ms,
        )
    log.warning(
        "PAGEWIRE_REDIS_URL is not set: using an in-process conversation lock,"
        " which is only correct for ONE router replica"
    )
    return LocalLocks(settings.lock_wait_ms)


async def main() -> None:
    settings = RouterSettings.from_env(current_environ())
    security = GrpcSecurity.from_env(current_environ(), "router")
    security.require_safe_bind(settings.host)
    access = access_settings(current_environ())
    scrape_port = metrics_port(current_environ())
    setup_logging("router", settings.log_level)
    # Before any channel, engine or client is built: they are instrumented as they are made.
    tracing = telemetry.setup("router", current_environ())
    security.announce(log)
    log.info("authorization", extra=access.describe())
    engine = create_engine(settings.database_url, "router", pool_size=settings.db_pool_size)
    session_factory = sessions(engine)
    locks = build_locks(settings)
    subscriptions = security.channel(settings.subscriptions_addr, "subscriptions")
    pages = PageDirectory(
        subscriptions_pb2_grpc.SubscriptionsServiceStub(subscriptions),
        settings.page_cache_ttl_s,
        settings.rpc_timeout_s,
    )
    environ = current_environ()
    tokens = security.channel(settings.tokens_addr, "tokens")
    graph = GraphClient(GraphSettings.from_env(environ))
    vault = TokenCache(TokensClient(tokens, settings.rpc_timeout_s), cache_ttl_from_env(environ))
    profiles = None
    if settings.profile_refresh_s > 0:
        profiles = ProfileFetcher(
            session_factory, graph, vault, refresh_s=settings.profile_refresh_s
        )
    notifier = FeedNotifier()
    sender = Sender(
        session_factory,
        locks,
        pages,
        graph,
        vault,
        app_id=graph.settings.app_id,
        notifier=notifier,
    )
    comment_actions = CommentActions(session_factory, locks, pages, graph, vault, notifier=notifier)
    router = build_router(
        engine,
        session_factory,
        locks,
        pages,
        apply=ApplySettings(
            batch=settings.apply_batch,
            lease_ms=settings.apply_lease_ms,
            workers=settings.apply_workers,
            idle_poll_s=settings.apply_idle_poll_s,
        ),
        sender=sender,
        comment_actions=comment_actions,
        profiles=profiles,
        notifier=notifier,
        parked_sweep_s=settings.parked_sweep_s,
    )
    servicer = router.servicer

    async def close_channel() -> None:
        if profiles is not None:
            await profiles.close()
        await graph.aclose()
        await tokens.close()
        await subscriptions.close()

    # Closed in reverse: the spans of the shutdown itself are flushed last.
    closers = [tracing.shutdown, engine.dispose, locks.close, close_channel]
    if scrape_port:
        closers.append(await serve_metrics(settings.host, scrape_port))
    service = await start_server(
        names=[SERVICE_NAME],
        register=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(
            servicer, server
        ),
        access=Policy.build([ROUTER_ACCESS], access, allow_unauthenticated=security.insecure),
        host=settings.host,
        port=settings.port,
        closers=closers,
        credentials=security.server_credentials(),
        health_port=security.health_port,
    )
    # Readiness follows what the ACK needs (PostgreSQL); stopped first among the closers,
    # after the background work (apply workers, sweep) that the server no longer feeds.
    watcher = router_watcher(service.health, SERVICE_NAME, settings)
    service.closers.append(router.stop)
    service.closers.append(watcher.stop)
    router.start()
    watcher.start()
    await serve_until_signal(service, drain=settings.drain_s, grace=settings.grace_s)


if __name__ == "__main__":
    run(main, "router")
