"""Run the callback gateway: uvicorn serving the app, a Kafka publisher opened in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from webhook_tasks_contracts import CALLBACK_PATH_PREFIX
from webhook_tasks_runtime.kafka import KafkaPublisher
from webhook_tasks_runtime.logging import configure_logging
from webhook_tasks_runtime.observability import HealthServer
from webhook_tasks_runtime.worker import KAFKA_REQUEST_TIMEOUT_MS, run_until_signalled

from .app import create_app
from .http_protocol import CoalescingHttpToolsProtocol
from .publishing import ReconnectingPublisher
from .settings import GatewaySettings

SERVICE = "callback-gateway"
CLIENT_ID = "webhook-tasks-callback-gateway"

logger = logging.getLogger(__name__)


def run() -> None:
    """Serve the gateway, configured from the environment, until SIGTERM or SIGINT."""
    settings = GatewaySettings()
    configure_logging(SERVICE, level=settings.log_level, fmt=settings.log_format)
    run_until_signalled(functools.partial(serve, settings))


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    """Serve the gateway until `stop` is set, then finish in-flight callbacks and close Kafka."""
    publisher = ReconnectingPublisher(
        functools.partial(
            KafkaPublisher.create,
            settings.kafka_bootstrap_servers,
            enable_idempotence=settings.kafka_enable_idempotence,
            client_id=CLIENT_ID,
            # aiokafka's default (1 MiB) would refuse a callback at the body limit.
            max_request_size=settings.kafka_max_request_bytes,
            # As the workers': a stop waits no longer than this for Kafka (aiokafka's: 40 s).
            request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
            **settings.kafka_client_options(),
        ),
        max_retry_delay=settings.gateway_kafka_retry_max_seconds,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            # Connecting happens in the background: the gateway serves (503) while Kafka is away.
            await publisher.start()
            stack.push_async_callback(publisher.stop)
            if settings.gateway_metrics_port is not None:
                metrics = HealthServer(
                    host=settings.gateway_metrics_host,
                    port=settings.gateway_metrics_port,
                    ready=publisher.is_ready,
                )
                await metrics.start()
                stack.push_async_callback(metrics.stop)
            yield

    app = create_app(
        settings, publisher, settings.callback_tokens(), readiness=publisher, lifespan=lifespan
    )
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            lifespan="on",
            http=CoalescingHttpToolsProtocol.configured(
                max_head_bytes=settings.gateway_max_header_bytes,
                read_timeout_seconds=settings.gateway_request_read_timeout_seconds,
            ),
            access_log=False,  # the access log would print callback URLs, tokens included
            # The client's address (per-client rate limit, refusal logs) is the peer's unless
            # the peer is a trusted proxy. Always explicit: uvicorn would otherwise read
            # FORWARDED_ALLOW_IPS and trust loopback peers.
            proxy_headers=bool(settings.gateway_trusted_proxies),
            forwarded_allow_ips=list(settings.gateway_trusted_proxies),
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=settings.gateway_shutdown_timeout_seconds,
        )
    )
    watcher = asyncio.create_task(_exit_when_set(server, stop), name="gateway-stop")
    try:
        await server.serve()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


class _Server(uvicorn.Server):
    """uvicorn's server, saying where it listens once its sockets are bound."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Bind, then log the URL (the real port, when the setting was 0)."""
        await super().startup(sockets)
        if self.started:
            url = _bound_url(self)
            logger.info(
                "callback gateway listening on %s",
                url,
                extra={"url": url, "callback_url": f"{url}{CALLBACK_PATH_PREFIX}/<id>/<token>"},
            )


async def _exit_when_set(server: uvicorn.Server, stop: asyncio.Event) -> None:
    await stop.wait()
    server.should_exit = True


def _bound_url(server: uvicorn.Server) -> str:
    host, port = server.config.host, server.config.port
    for listener in server.servers:
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
            break
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
