"""Print each step of every task as it happens, by reading the system's topics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from webhook_tasks_contracts import (
    CallbackReceived,
    ChatCommentPosted,
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskResultArrivedLate,
    Topics,
    lifecycle_event_adapter,
    notification_event_adapter,
)

logger = logging.getLogger(__name__)

Printer = Callable[[str], None]


class EventWatcher:
    """Follow the lifecycle, callback and notification topics and describe each event."""

    def __init__(self, bootstrap_servers: str, topics: Topics, printer: Printer) -> None:
        self._topics = topics
        self._printer = printer
        self._consumer = AIOKafkaConsumer(
            topics.task_lifecycle,
            topics.callback_received,
            topics.notifications,
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            auto_offset_reset="latest",
            client_id="webhook-tasks-up-watcher",
        )

    async def start(self) -> None:
        """Connect and pin the current end of each topic, so nothing after this is missed."""
        await self._consumer.start()
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)

    async def run(self) -> None:
        """Print events until cancelled."""
        async for record in self._consumer:
            line = self.describe(record.topic, record.value or b"")
            if line:
                self._printer(line)

    async def stop(self) -> None:
        """Disconnect."""
        with contextlib.suppress(Exception):
            await self._consumer.stop()

    def describe(self, topic: str, value: bytes) -> str | None:
        """Return one human line for an event, or None for events not worth a line."""
        try:
            if topic == self._topics.task_lifecycle:
                return _describe_lifecycle(value)
            if topic == self._topics.callback_received:
                callback = CallbackReceived.model_validate_json(value)
                return _describe_callback(callback)
            if topic == self._topics.notifications:
                event = notification_event_adapter.validate_json(value)
                if isinstance(event, ChatCommentPosted):
                    text = "\n".join(f"    {line}" for line in event.text.splitlines())
                    return (
                        f"[bold]chat comment written[/] on task {event.task.task_id} "
                        f"({event.correlation_id}):\n{text}"
                    )
        except ValidationError:
            logger.debug("unreadable event on %s", topic)
        return None


def _describe_lifecycle(value: bytes) -> str | None:
    event = lifecycle_event_adapter.validate_json(value)
    cid = event.correlation_id
    if isinstance(event, TaskDispatched):
        ack = event.ack_status or "2xx"
        eta = (
            f", estimatedCompletion {event.estimated_completion}"
            if event.estimated_completion
            else ""
        )
        return (
            f"[bold]task dispatched[/] {event.task.task_id} to {event.webhook_host} "
            f"with correlation id [cyan]{cid}[/]\n"
            f"[bold]external service accepted[/] ({ack}{eta}); "
            f"deadline {event.deadline_at:%H:%M:%S} UTC"
        )
    if isinstance(event, TaskProgressed):
        return f"progress {event.progress if event.progress is not None else '?'}% on {cid}"
    if isinstance(event, TaskCompleted):
        return f"[green]task completed[/] {cid}"
    if isinstance(event, TaskFailed):
        return f"[red]task failed[/] {cid}: {event.reason}"
    if isinstance(event, TaskExpired):
        return f"[yellow]task expired[/] {cid} (no callback within {event.timeout_seconds}s)"
    if isinstance(event, TaskResultArrivedLate):
        return f"[yellow]late result[/] for expired task {cid}: {event.result_url or 'no link'}"
    return None


def _describe_callback(callback: CallbackReceived) -> str:
    detail = ""
    if callback.status == "success" and callback.result_url:
        detail = f" resultUrl {callback.result_url}"
    elif callback.status == "error" and callback.error:
        detail = f" error {callback.error!r}"
    return f"[bold]callback received[/] for {callback.correlation_id}: {callback.status}{detail}"
