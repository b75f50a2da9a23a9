"""Run the notifier: consume task lifecycle events until SIGTERM."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from webhook_tasks_contracts import lifecycle_event_adapter
from webhook_tasks_runtime.db import load_migrations
from webhook_tasks_runtime.kafka import ConsumerSpec
from webhook_tasks_runtime.logging import configure_logging
from webhook_tasks_runtime.worker import (
    WorkerParts,
    WorkerResources,
    run_until_signalled,
    serve_worker,
)

from .comment_templates import load_templates
from .handlers import LifecycleEventType, LifecycleHandler
from .settings import NotifierSettings
from .sink import Backoff, HttpSink, create_http_client


async def serve(settings: NotifierSettings, stop: asyncio.Event) -> None:
    """Consume the task lifecycle topic until `stop` is set."""
    # Read the templates before connecting anywhere: a broken override stops start-up.
    templates = load_templates(settings.notifier_templates_dir)

    async def build(resources: WorkerResources) -> WorkerParts:
        sink = await _sink(settings, resources)
        handler = LifecycleHandler(
            pool=resources.pool,
            relay=resources.relay,
            templates=templates,
            topics=settings.topics,
            sink=sink,
        )
        consumer: ConsumerSpec[LifecycleEventType] = ConsumerSpec(
            name="notifier-lifecycle",
            topic=settings.topics.task_lifecycle,
            group_id=settings.consumer_group,
            adapter=lifecycle_event_adapter,
            handle=handler.handle,
            correlation_of=lambda event: event.correlation_id,
        )
        return WorkerParts(consumers=[consumer], background=[sink.run] if sink else [])

    await serve_worker(
        name="notifier",
        settings=settings,
        migrations=load_migrations("webhook_tasks_notifier"),
        build=build,
        stop=stop,
    )


async def _sink(settings: NotifierSettings, resources: WorkerResources) -> HttpSink | None:
    if settings.notification_sink_url is None or settings.notification_sink_secret is None:
        return None
    http = create_http_client(timeout_seconds=settings.notification_sink_timeout)
    resources.exit_stack.push_async_callback(http.aclose)
    return HttpSink(
        resources.pool,
        http,
        url=str(settings.notification_sink_url),
        secret=settings.notification_sink_secret.get_secret_value(),
        backoff=Backoff(
            first=timedelta(seconds=settings.notification_sink_first_retry),
            longest=timedelta(seconds=settings.notification_sink_longest_retry),
        ),
        max_attempts=settings.notification_sink_max_attempts,
        timeout=settings.notification_sink_timeout,
        retention=timedelta(seconds=settings.notification_sink_retention),
    )


def run() -> None:
    """Run the notifier with settings from the environment until SIGTERM or SIGINT."""
    settings = NotifierSettings()
    configure_logging("notifier", level=settings.log_level, fmt=settings.log_format)
    run_until_signalled(lambda stop: serve(settings, stop))
