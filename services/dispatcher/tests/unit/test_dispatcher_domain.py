"""The state machine's rules, without I/O."""

from __future__ import annotations

import pytest
from webhook_tasks_dispatcher.domain import (
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    CallbackStatus,
    TaskStatus,
    status_after_callback,
    why_not_applied,
)


def test_every_state_is_open_or_terminal_never_both() -> None:
    assert set(OPEN_STATUSES) | TERMINAL_STATUSES == set(TaskStatus)
    assert not set(OPEN_STATUSES) & TERMINAL_STATUSES


@pytest.mark.parametrize(
    ("callback", "status"),
    [("success", TaskStatus.COMPLETED), ("error", TaskStatus.FAILED), ("progress", None)],
)
def test_callbacks_move_open_tasks(callback: CallbackStatus, status: TaskStatus | None) -> None:
    assert status_after_callback(callback) == status


def test_reasons_for_ignoring_say_what_happened() -> None:
    assert "unknown correlation id" in why_not_applied(None, "callback:success").reason
    assert "already expired" in why_not_applied(TaskStatus.EXPIRED, "callback:success").reason
    assert "progress report" in why_not_applied(TaskStatus.INITIATED, "deadline").reason
