"""The task state machine: which input moves a task where. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class TaskStatus(StrEnum):
    """Where a task is in its life (the product summary's states)."""

    PENDING = "pending"
    INITIATED = "initiated"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


OPEN_STATUSES: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.INITIATED)
"""States a callback or a deadline may still move; every other state is terminal."""

TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.EXPIRED})

CallbackStatus = Literal["success", "error", "progress"]


def status_after_callback(callback_status: CallbackStatus) -> TaskStatus | None:
    """Return the state a callback moves an open task to; None if it leaves the state alone."""
    if callback_status == "success":
        return TaskStatus.COMPLETED
    if callback_status == "error":
        return TaskStatus.FAILED
    return None


@dataclass(frozen=True, slots=True)
class Ignored:
    """Why an input did not change a task; recorded in its history."""

    reason: str


def why_not_applied(current: TaskStatus | None, kind: str) -> Ignored:
    """Explain why `kind` found nothing to change, given the task's current state."""
    if current is None:
        return Ignored(f"{kind} for an unknown correlation id")
    if current in TERMINAL_STATUSES:
        return Ignored(f"{kind} arrived after the task was already {current.value}")
    if kind == "deadline":
        return Ignored("deadline passed, but a progress report had already moved it later")
    return Ignored(f"{kind} did not apply to a task that is {current.value}")
