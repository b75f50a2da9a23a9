"""Run the notifier: consume task lifecycle events until SIGTERM."""

from __future__ import annotations

import asyncio

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


async def serve(settings: NotifierSettings, stop: asyncio.Event) -> None:
    """Consume the task lifecycle topic until `stop` is set."""
    # Read the templates before connecting anywhere: a broken override stops start-up.
    templates = load_templates(settings.notifier_templates_dir)

    async def build(resources: WorkerResources) -> WorkerParts:
        handler = LifecycleHandler(
            pool=resources.pool,
            relay=resources.relay,
            templates=templates,
            topics=settings.topics,
        )
        consumer: ConsumerSpec[LifecycleEventType] = ConsumerSpec(
            name="notifier-lifecycle",
            topic=settings.topics.task_lifecycle,
            group_id=settings.consumer_group,
            adapter=lifecycle_event_adapter,
            handle=handler.handle,
            correlation_of=lambda event: event.correlation_id,
        )
        return WorkerParts(consumers=[consumer])

    await serve_worker(
        name="notifier",
        settings=settings,
        migrations=load_migrations("webhook_tasks_notifier"),
        build=build,
        stop=stop,
    )


def run() -> None:
    """Run the notifier with settings from the environment until SIGTERM or SIGINT."""
    settings = NotifierSettings()
    configure_logging("notifier", level=settings.log_level, fmt=settings.log_format)
    run_until_signalled(lambda stop: serve(settings, stop))
