"""Print each step of every task as it happens, by reading the system's topics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.text import Text
from webhook_tasks_contracts import (
    AnyLifecycleEvent,
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

from .terminal import literal, plain_number

logger = logging.getLogger(__name__)

Printer = Callable[[RenderableType], None]


class EventWatcher:
    """Follow the lifecycle, callback and notification topics and describe each task's steps.

    The three topics arrive in no fixed order relative to each other, so each task's
    lines are put in causal order: a callback is told before the outcome it caused, and
    a comment after its outcome.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics,
        printer: Printer,
        *,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._topics = topics
        self._client_options = dict(client_options or {})
        self._printer = printer
        self._callbacks_told: set[str] = set()
        self._outcomes_told: set[str] = set()
        self._sync: set[str] = set()  # tasks whose result is the answer, not a callback
        self._comments_waiting: dict[str, list[RenderableType]] = {}
        self._bootstrap_servers = bootstrap_servers
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Connect and pin the current end of each topic, so nothing after this is missed."""
        self._consumer = AIOKafkaConsumer(
            self._topics.task_lifecycle,
            self._topics.callback_received,
            self._topics.notifications,
            bootstrap_servers=self._bootstrap_servers,
            group_id=None,
            auto_offset_reset="latest",
            client_id="webhook-tasks-up-watcher",
            **self._client_options,
        )
        await self._consumer.start()
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)

    async def run(self) -> None:
        """Print events until cancelled."""
        assert self._consumer is not None, "start() first"
        async for record in self._consumer:
            self.handle(record.topic, record.value or b"")

    def handle(self, topic: str, value: bytes) -> None:
        """Print the lines an event adds; one that cannot be printed is logged and skipped."""
        try:
            for line in self.describe(topic, value):
                self._printer(line)
        except Exception as error:
            # One odd event must not silence the steps of every task after it.
            logger.warning("could not print an event on %s: %r", topic, error)

    async def stop(self) -> None:
        """Disconnect."""
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    def describe(self, topic: str, value: bytes) -> list[RenderableType]:
        """Return the lines an event adds, in each task's causal order (often none)."""
        try:
            if topic == self._topics.task_lifecycle:
                return self._lifecycle(lifecycle_event_adapter.validate_json(value))
            if topic == self._topics.callback_received:
                return self._callback(CallbackReceived.model_validate_json(value))
            if topic == self._topics.notifications:
                event = notification_event_adapter.validate_json(value)
                if isinstance(event, ChatCommentPosted):
                    return self._comment(event)
        except ValidationError:
            logger.debug("unreadable event on %s", topic)
        return []

    def _lifecycle(self, event: AnyLifecycleEvent) -> list[RenderableType]:
        cid = event.correlation_id
        lines: list[RenderableType] = []
        if isinstance(event, TaskDispatched) and event.mode == "sync":
            self._sync.add(cid)
        # A sync task's outcome came in the answer: no callback to tell of.
        caused_by_callback = cid not in self._sync and (
            isinstance(event, TaskCompleted)
            or (isinstance(event, TaskFailed) and event.cause == "callback_error")
        )
        if (
            isinstance(event, TaskCompleted | TaskFailed)
            and caused_by_callback
            and cid not in self._callbacks_told
        ):
            # The outcome overtook its callback's own line: tell the callback first.
            self._callbacks_told.add(cid)
            lines.append(_describe_outcome_callback(event))
        line = _describe_lifecycle(event)
        if line is not None:
            lines.append(line)
        if isinstance(event, TaskCompleted | TaskFailed | TaskExpired):
            self._outcomes_told.add(cid)
            lines += self._comments_waiting.pop(cid, [])
        return lines

    def _callback(self, callback: CallbackReceived) -> list[RenderableType]:
        if callback.status != "progress":
            if callback.correlation_id in self._callbacks_told:
                return []
            self._callbacks_told.add(callback.correlation_id)
        return [_describe_callback(callback)]

    def _comment(self, event: ChatCommentPosted) -> list[RenderableType]:
        heading = _line(
            (f"chat comment {'updated' if event.edited else 'written'}", "bold"),
            f" on task {event.task.task_id} ({event.correlation_id}):",
        )
        # The Markdown the chat receives, indented, each line as it reads: escapes included,
        # and a long link on one line, whole, for a pipe or a log to keep.
        text = Text("\n").join(
            literal(f"    {row}" if row else "") for row in event.text.splitlines()
        )
        line = Group(heading, text)
        waiting = event.kind in ("result", "error", "expired") and (
            event.correlation_id not in self._outcomes_told
        )
        # Also what comes after a comment that waits: the progress comment's last text.
        if waiting or event.correlation_id in self._comments_waiting:
            self._comments_waiting.setdefault(event.correlation_id, []).append(line)
            return []
        return [line]


def _line(*parts: str | tuple[str, str]) -> Text:
    """Return one line of plain text and (text, style) pairs, every part shown literally."""
    return Text.assemble(
        *(literal(part) if isinstance(part, str) else literal(*part) for part in parts)
    )


def _describe_lifecycle(event: AnyLifecycleEvent) -> RenderableType | None:
    cid = event.correlation_id
    if isinstance(event, TaskDispatched):
        dispatched = _line(
            ("task dispatched", "bold"),
            f" {event.task.task_id} to {event.webhook_host} with correlation id ",
            (cid, "cyan"),
        )
        if event.mode == "sync":
            answered = _line(("external service answered", "bold"), " with the result (sync)")
            return Group(dispatched, answered)
        ack = event.ack_status or "2xx"
        eta = (
            f", estimatedCompletion {event.estimated_completion}"
            if event.estimated_completion
            else ""
        )
        accepted = _line(
            ("external service accepted", "bold"),
            f" ({ack}{eta}); deadline {event.deadline_at:%H:%M:%S} UTC",
        )
        return Group(dispatched, accepted)
    if isinstance(event, TaskProgressed):
        progress = plain_number(event.progress) if event.progress is not None else "?"
        return _line(f"progress {progress}% on {cid}")
    if isinstance(event, TaskCompleted):
        return _line(("task completed", "green"), f" {cid}")
    if isinstance(event, TaskFailed):
        return _line(("task failed", "red"), f" {cid}: {event.reason}")
    if isinstance(event, TaskExpired):
        return _line(
            ("task expired", "yellow"), f" {cid} (no callback within {event.timeout_seconds}s)"
        )
    if isinstance(event, TaskResultArrivedLate):
        return _line(
            ("late result", "yellow"), f" for expired task {cid}: {event.result_url or 'no link'}"
        )
    return None


def _describe_outcome_callback(event: TaskCompleted | TaskFailed) -> Text:
    if isinstance(event, TaskCompleted):
        detail = f" resultUrl {event.result_url}" if event.result_url else ""
        return _line(("callback received", "bold"), f" for {event.correlation_id}: success{detail}")
    return _line(
        ("callback received", "bold"), f" for {event.correlation_id}: error {event.reason!r}"
    )


def _describe_callback(callback: CallbackReceived) -> Text:
    detail = ""
    if callback.status == "success" and callback.result_url:
        detail = f" resultUrl {callback.result_url}"
    elif callback.status == "error" and callback.error:
        detail = f" {callback.error!r}"
    return _line(
        ("callback received", "bold"),
        f" for {callback.correlation_id}: {callback.status}{detail}",
    )
