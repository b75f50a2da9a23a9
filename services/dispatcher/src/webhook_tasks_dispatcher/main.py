"""Run the dispatcher as a process: `webhook-tasks dispatcher`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from webhook_tasks_runtime.catch_up import GroupCatchUp
from webhook_tasks_runtime.db import load_migrations
from webhook_tasks_runtime.logging import configure_logging
from webhook_tasks_runtime.tracing import create_tracer_provider
from webhook_tasks_runtime.worker import (
    WorkerParts,
    WorkerResources,
    run_until_signalled,
    serve_worker,
)

from .client import WebhookClient, create_transport
from .handlers import callback_group, consumers
from .service import Dispatcher
from .settings import DispatcherSettings


async def serve(
    settings: DispatcherSettings,
    stop: asyncio.Event,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Dispatch tasks until `stop` is set; `transport`, if given, carries the requests."""

    async def build(resources: WorkerResources) -> WorkerParts:
        tracing = create_tracer_provider(settings, "dispatcher")
        if tracing is not None:
            resources.exit_stack.callback(tracing.shutdown)
        guard = settings.url_guard()
        outbound = transport or create_transport(
            guard=guard,
            max_connections=settings.max_connections,
            max_connections_per_host=settings.max_connections_per_host,
        )
        resources.exit_stack.push_async_callback(outbound.aclose)
        callbacks_caught_up = GroupCatchUp(
            settings.kafka_bootstrap_servers,
            topic=settings.topics.callback_received,
            group_id=callback_group(settings.topics),
            client_id="webhook-tasks-dispatcher",
            timeout=settings.deadline_wait_for_callbacks_seconds,
            stopping=stop,
            client_options=settings.kafka_client_options(),
        )
        await callbacks_caught_up.start()
        resources.exit_stack.push_async_callback(callbacks_caught_up.stop)
        dispatcher = Dispatcher(
            pool=resources.pool,
            webhooks=WebhookClient(
                outbound,
                guard=guard,
                max_response_bytes=settings.max_response_bytes,
                timeout_seconds=settings.request_timeout_seconds,
                max_requests_per_host=settings.max_connections_per_host,
            ),
            tokens=settings.callback_tokens(),
            callback_base_url=settings.public_callback_base_url,
            topics=settings.topics,
            after_commit=resources.relay.wake,
            dispatch_lease=timedelta(seconds=settings.dispatch_lease_seconds),
            retry=settings.retry_policy(),
            breakers=settings.circuit_breakers(),
            signing=settings.signing_keys(),
            sealer=settings.request_sealer(),
            tracer=tracing.get_tracer(__name__) if tracing is not None else None,
            max_in_flight=settings.sender_max_in_flight,
            callbacks_caught_up=callbacks_caught_up,
        )

        async def send_due_requests() -> None:
            await dispatcher.run_sender(
                poll_interval=settings.sender_poll_interval,
                shutdown_grace=settings.shutdown_grace_seconds,
            )

        return WorkerParts(
            consumers=consumers(dispatcher, settings.topics), background=[send_due_requests]
        )

    await serve_worker(
        name="dispatcher",
        settings=settings,
        migrations=load_migrations("webhook_tasks_dispatcher"),
        build=build,
        stop=stop,
    )


def run(*, transport: httpx.AsyncBaseTransport | None = None) -> None:
    """Read settings from the environment and run until SIGTERM; `transport` as for `serve`."""
    settings = DispatcherSettings()
    configure_logging("dispatcher", level=settings.log_level, fmt=settings.log_format)
    run_until_signalled(lambda stop: serve(settings, stop, transport=transport))
