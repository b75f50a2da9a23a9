"""What each task-lifecycle event does to the deadlines, and the consumer handler applying it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from webhook_tasks_contracts import (
    AnyLifecycleEvent,
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskResultArrivedLate,
)

__all__ = ["AnyLifecycleEvent", "LifecycleHandler", "change_for"]


@dataclass(frozen=True, slots=True)
class StartDeadline:
    """Store the first deadline of a dispatched task."""

    correlation_id: str
    task_id: str
    deadline_at: datetime


@dataclass(frozen=True, slots=True)
class ExtendDeadline:
    """Move the deadline of a task that reported progress, if that makes it later."""

    correlation_id: str
    task_id: str
    deadline_at: datetime


@dataclass(frozen=True, slots=True)
class FinishTask:
    """Drop the deadline of a task that ended, for good."""

    correlation_id: str


DeadlineChange = StartDeadline | ExtendDeadline | FinishTask


def change_for(event: AnyLifecycleEvent) -> DeadlineChange:
    """Decide what `event` does to its task's deadline."""
    match event:
        case TaskDispatched():
            return StartDeadline(event.correlation_id, event.task.task_id, event.deadline_at)
        case TaskProgressed():
            return ExtendDeadline(event.correlation_id, event.task.task_id, event.deadline_at)
        case TaskCompleted() | TaskFailed() | TaskExpired() | TaskResultArrivedLate():
            # A late result comes only after expiry: the task stays finished.
            return FinishTask(event.correlation_id)


class DeadlineStore(Protocol):
    """Where deadlines live; each call is idempotent and ignores finished tasks."""

    async def store(self, correlation_id: str, task_id: str, deadline_at: datetime) -> bool: ...

    async def finish(self, correlation_id: str) -> None: ...


class LifecycleHandler:
    """Apply each lifecycle event to the store and tell the scanner about new deadlines."""

    def __init__(
        self, store: DeadlineStore, on_deadline_stored: Callable[[datetime], None]
    ) -> None:
        self._store = store
        self._on_deadline_stored = on_deadline_stored

    async def __call__(self, event: AnyLifecycleEvent) -> None:
        """Handle one lifecycle event."""
        change = change_for(event)
        match change:
            case StartDeadline() | ExtendDeadline():
                # Stored alike: a heartbeat may come before the 2xx, and only later counts.
                stored = await self._store.store(*_deadline_fields(change))
            case FinishTask():
                await self._store.finish(change.correlation_id)
                return
        if stored:
            self._on_deadline_stored(change.deadline_at)


def _deadline_fields(change: StartDeadline | ExtendDeadline) -> tuple[str, str, datetime]:
    return change.correlation_id, change.task_id, change.deadline_at
