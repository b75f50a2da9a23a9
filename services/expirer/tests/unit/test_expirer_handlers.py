"""Which lifecycle event does what to a deadline, and when the scanner is told."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from webhook_tasks_contracts import (
    TaskCompleted,
    TaskDispatched,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskRef,
)
from webhook_tasks_expirer.handlers import (
    AnyLifecycleEvent,
    ExtendDeadline,
    FinishTask,
    LifecycleHandler,
    StartDeadline,
    change_for,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TASK = TaskRef(task_id="task-1", user_id="user-1", project_id="project-1")


def dispatched(deadline_at: datetime, correlation_id: str = "corr-1") -> TaskDispatched:
    return TaskDispatched(
        correlation_id=correlation_id,
        task=TASK,
        deadline_at=deadline_at,
        timeout_seconds=300,
        webhook_host="example.com",
    )


def progressed(deadline_at: datetime, correlation_id: str = "corr-1") -> TaskProgressed:
    return TaskProgressed(
        correlation_id=correlation_id, task=TASK, deadline_at=deadline_at, progress=50
    )


def completed(correlation_id: str = "corr-1") -> TaskCompleted:
    return TaskCompleted(correlation_id=correlation_id, task=TASK, result_url="https://r.example")


def failed(correlation_id: str = "corr-1") -> TaskFailed:
    return TaskFailed(
        correlation_id=correlation_id, task=TASK, cause="callback_error", reason="boom"
    )


def expired(correlation_id: str = "corr-1") -> TaskExpired:
    return TaskExpired(
        correlation_id=correlation_id, task=TASK, deadline_at=NOW, timeout_seconds=300
    )


class FakeDeadlineStore:
    """Keeps deadlines in memory with the semantics of the PostgreSQL store."""

    def __init__(self) -> None:
        self.deadlines: dict[str, datetime] = {}
        self.finished: set[str] = set()

    async def store(self, correlation_id: str, task_id: str, deadline_at: datetime) -> bool:
        current = self.deadlines.get(correlation_id)
        if correlation_id in self.finished or (current is not None and current >= deadline_at):
            return False
        self.deadlines[correlation_id] = deadline_at
        return True

    async def finish(self, correlation_id: str) -> None:
        self.finished.add(correlation_id)
        self.deadlines.pop(correlation_id, None)


@pytest.fixture
def store() -> FakeDeadlineStore:
    return FakeDeadlineStore()


@pytest.fixture
def noticed() -> list[datetime]:
    return []


@pytest.fixture
def handler(store: FakeDeadlineStore, noticed: list[datetime]) -> LifecycleHandler:
    return LifecycleHandler(store, on_deadline_stored=noticed.append)


def test_dispatched_starts_a_deadline() -> None:
    assert change_for(dispatched(NOW)) == StartDeadline("corr-1", "task-1", NOW)


def test_progressed_extends_the_deadline() -> None:
    later = NOW + timedelta(minutes=5)
    assert change_for(progressed(later)) == ExtendDeadline("corr-1", "task-1", later)


@pytest.mark.parametrize("terminal", [completed, failed, expired])
def test_terminal_events_finish_the_task(terminal: Callable[[], AnyLifecycleEvent]) -> None:
    assert change_for(terminal()) == FinishTask("corr-1")


async def test_a_stored_deadline_is_announced_to_the_scanner(
    handler: LifecycleHandler, store: FakeDeadlineStore, noticed: list[datetime]
) -> None:
    await handler(dispatched(NOW))

    assert store.deadlines == {"corr-1": NOW}
    assert noticed == [NOW]


async def test_a_replayed_dispatch_changes_nothing(
    handler: LifecycleHandler, store: FakeDeadlineStore, noticed: list[datetime]
) -> None:
    later = NOW + timedelta(minutes=1)
    await handler(dispatched(NOW))
    await handler(progressed(later))
    await handler(dispatched(NOW))

    assert store.deadlines == {"corr-1": later}
    assert noticed == [NOW, later]


async def test_an_earlier_progress_deadline_does_not_pull_it_back(
    handler: LifecycleHandler, store: FakeDeadlineStore, noticed: list[datetime]
) -> None:
    later = NOW + timedelta(minutes=1)
    await handler(dispatched(NOW))
    await handler(progressed(later))
    await handler(progressed(NOW))

    assert store.deadlines == {"corr-1": later}
    assert noticed == [NOW, later]


async def test_an_extended_deadline_is_announced_once(
    handler: LifecycleHandler, store: FakeDeadlineStore, noticed: list[datetime]
) -> None:
    later = NOW + timedelta(minutes=1)
    await handler(dispatched(NOW))
    await handler(progressed(later))
    await handler(progressed(later))

    assert store.deadlines == {"corr-1": later}
    assert noticed == [NOW, later]


async def test_a_finished_task_gets_no_deadline_back(
    handler: LifecycleHandler, store: FakeDeadlineStore, noticed: list[datetime]
) -> None:
    await handler(dispatched(NOW))
    await handler(completed())
    await handler(dispatched(NOW))
    await handler(progressed(NOW + timedelta(minutes=1)))

    assert store.deadlines == {}
    assert store.finished == {"corr-1"}
    assert noticed == [NOW]
