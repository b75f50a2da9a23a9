"""Kafka consumers of the dispatcher: parse, call the service, return."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from webhook_tasks_contracts import CallbackReceived, DeadlineReached, TaskRequested, Topics
from webhook_tasks_runtime.kafka import ConsumerSpec

from .service import Dispatcher


def request_group(topics: Topics) -> str:
    """Return the group id of the dispatcher's consumer of task requests."""
    return f"{topics.prefix}.dispatcher.task-requested"


def callback_group(topics: Topics) -> str:
    """Return the group id of the dispatcher's consumer of callbacks."""
    return f"{topics.prefix}.dispatcher.callback-received"


def consumers(dispatcher: Dispatcher, topics: Topics) -> list[ConsumerSpec[Any]]:
    """Return the dispatcher's three consumers."""
    group = f"{topics.prefix}.dispatcher"
    return [
        ConsumerSpec(
            name="dispatcher.task-requested",
            topic=topics.task_requested,
            group_id=request_group(topics),
            adapter=TypeAdapter(TaskRequested),
            handle=dispatcher.consume,
            correlation_of=lambda event: None,
        ),
        ConsumerSpec(
            name="dispatcher.callback-received",
            topic=topics.callback_received,
            group_id=callback_group(topics),
            adapter=TypeAdapter(CallbackReceived),
            handle=dispatcher.apply_callback,
            correlation_of=lambda event: event.correlation_id,
        ),
        ConsumerSpec(
            name="dispatcher.deadline-reached",
            topic=topics.deadline_reached,
            group_id=f"{group}.deadline-reached",
            adapter=TypeAdapter(DeadlineReached),
            handle=dispatcher.apply_deadline,
            correlation_of=lambda event: event.correlation_id,
        ),
    ]
