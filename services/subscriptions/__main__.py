"""Composition root of the subscriptions service: `python -m services.subscriptions`."""

from __future__ import annotations

import logging

from pagewire.kit.channels import open_channel
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.grpcserver import serve_until_signal, start_server
from pagewire.kit.logs import setup_logging
from pagewire.kit.runner import run
from pagewire.kit.settings import current_environ
from services.subscriptions.clients import RouterClient, TokensClient
from services.subscriptions.config import SubscriptionsSettings
from services.subscriptions.connections import Connections
from services.subscriptions.graph import GraphClient
from services.subscriptions.server import SERVICE_NAME, SubscriptionsServiceServicer, register

log = logging.getLogger("pagewire.subscriptions")


async def main() -> None:
    settings = SubscriptionsSettings.from_env(current_environ())
    setup_logging("subscriptions", settings.log_level)
    engine = create_engine(settings.database_url, "subscriptions")
    tokens_channel = open_channel(settings.tokens_target)
    router_channel = open_channel(settings.router_target)
    graph = GraphClient(
        graph_url=settings.graph_url,
        instagram_graph_url=settings.instagram_graph_url,
        version=settings.graph_version,
        timeout_s=settings.graph_timeout_s,
    )
    connections = Connections(
        sessions(engine),
        vault=TokensClient(tokens_channel, settings.rpc_timeout_s),
        graph=graph,
        router=RouterClient(router_channel, settings.route_parked_timeout_s),
        default_fields=settings.default_fields,
    )
    log.info(
        "graph api",
        extra={
            "graph_url": settings.graph_url,
            "instagram_graph_url": settings.instagram_graph_url,
            "graph_version": settings.graph_version,
            "tokens": settings.tokens_target,
            "router": settings.router_target,
        },
    )

    async def close_channels() -> None:
        await tokens_channel.close()
        await router_channel.close()

    service = await start_server(
        names=[SERVICE_NAME],
        register=register(SubscriptionsServiceServicer(connections)),
        host=settings.host,
        port=settings.port,
        closers=[engine.dispose, graph.aclose, close_channels],
    )
    await serve_until_signal(service, drain=settings.drain_s, grace=settings.grace_s)


if __name__ == "__main__":
    run(main, "subscriptions")
