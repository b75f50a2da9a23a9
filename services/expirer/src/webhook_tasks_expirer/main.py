"""Entry point: consume task lifecycle events and scan for passed deadlines."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from webhook_tasks_contracts import lifecycle_event_adapter, utc_now
from webhook_tasks_runtime.db import create_pool, load_migrations
from webhook_tasks_runtime.kafka import ConsumerSpec
from webhook_tasks_runtime.logging import configure_logging
from webhook_tasks_runtime.worker import (
    WorkerParts,
    WorkerResources,
    run_until_signalled,
    serve_worker,
)

from .handlers import AnyLifecycleEvent, LifecycleHandler
from .reconciler import Reconciler
from .repository import PostgresDeadlineStore
from .scanner import Clock, DeadlineScanner
from .settings import ExpirerSettings

SERVICE_NAME = "expirer"


async def serve(settings: ExpirerSettings, stop: asyncio.Event, *, clock: Clock = utc_now) -> None:
    """Run the expirer until `stop` is set."""

    async def build(resources: WorkerResources) -> WorkerParts:
        # The scanner's own connections: a burst of lifecycle events holding every pooled
        # connection must not make a deadline wait for one.
        scanner_pool = await create_pool(
            settings.database_url.get_secret_value(),
            settings.database_schema,
            max_size=2,
            statement_timeout=settings.database_timeout_seconds,
        )
        resources.exit_stack.push_async_callback(scanner_pool.close)
        scanner = DeadlineScanner(
            scanner_pool,
            topics=settings.topics,
            wake_relay=resources.relay.wake,
            clock=clock,
            batch_size=settings.scan_batch_size,
            poll_interval=settings.scan_poll_interval,
        )
        reconciler = Reconciler(
            resources.pool,
            topics=settings.topics,
            wake_relay=resources.relay.wake,
            on_deadline_restored=scanner.notice_deadline,
            clock=clock,
            interval=settings.reconcile_interval,
            grace=timedelta(seconds=settings.reconcile_grace),
            finished_retention=timedelta(seconds=settings.finished_task_retention),
            batch_size=settings.reconcile_batch_size,
        )
        handler = LifecycleHandler(
            PostgresDeadlineStore(resources.pool), on_deadline_stored=scanner.notice_deadline
        )
        consumer: ConsumerSpec[AnyLifecycleEvent] = ConsumerSpec(
            name=f"{SERVICE_NAME}-task-lifecycle",
            topic=settings.topics.task_lifecycle,
            # Prefixed like the topics, so deployments sharing a cluster keep their offsets apart.
            group_id=f"{settings.topic_prefix}.{SERVICE_NAME}",
            adapter=lifecycle_event_adapter,
            handle=handler,
            correlation_of=lambda event: event.correlation_id,
        )
        return WorkerParts(consumers=[consumer], background=[scanner.run, reconciler.run])

    await serve_worker(
        name=SERVICE_NAME,
        settings=settings,
        migrations=load_migrations("webhook_tasks_expirer"),
        build=build,
        stop=stop,
    )


def run() -> None:
    """Run the expirer with settings from the environment until SIGTERM or SIGINT."""
    settings = ExpirerSettings()
    configure_logging(SERVICE_NAME, level=settings.log_level, fmt=settings.log_format)
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    run()
