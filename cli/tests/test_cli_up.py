"""`webhook-tasks up` stops everything it started, whatever became of its step printer."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest
from rich.console import Console
from rich.errors import MarkupError
from webhook_tasks_cli.config import StackConfig, write_stack_file
from webhook_tasks_cli.stack import Stack, StackOptions
from webhook_tasks_cli.up import RESTART_DELAYS, _shut_down, _supervise
from webhook_tasks_cli.watch import EventWatcher
from webhook_tasks_contracts import Topics


def options(log_dir: Path) -> StackOptions:
    return StackOptions(
        database_url="postgresql://u@127.0.0.1:1/db",
        kafka_bootstrap_servers="127.0.0.1:1",
        kafka_enable_idempotence=False,
        callback_token_keys="k:base64:" + "A" * 44,
        gateway_port=1,
        log_dir=log_dir,
    )


class StoppedStack(Stack):
    """A stack of no processes that records being stopped."""

    stopped = False

    def stop(self, *, timeout: float = 20.0) -> None:
        self.stopped = True


async def test_a_step_printer_that_failed_does_not_keep_the_services_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack_file = tmp_path / "stack.json"
    monkeypatch.setenv("WEBHOOK_TASKS_STACK_FILE", str(stack_file))
    write_stack_file(StackConfig(kafka_bootstrap_servers="127.0.0.1:1", pid=os.getpid()))
    stack = StoppedStack(options(tmp_path))

    async def fail() -> None:
        raise MarkupError("closing tag '[/tmp/job.log]' has nothing to close")

    watching = asyncio.create_task(fail())
    await asyncio.sleep(0)
    out = io.StringIO()

    await _shut_down(
        EventWatcher("127.0.0.1:1", Topics("up-test"), print), watching, stack, Console(file=out)
    )

    assert stack.stopped
    assert not stack_file.exists()
    assert "the step printer had stopped: MarkupError(" in out.getvalue()


class CrashingStack(Stack):
    """A stack whose `dispatcher` exits again at every start, and `notifier` once, later."""

    def __init__(self, options: StackOptions) -> None:
        super().__init__(options)
        self.down = {"dispatcher": 1}
        self.starts: list[tuple[str, float]] = []

    def exited(self) -> dict[str, int]:
        return dict(self.down)

    def start_service(self, service: str, *args: str, replica: int = 1) -> None:
        self.starts.append((service, time.monotonic()))
        if service != "dispatcher":
            del self.down[service]


async def test_a_service_that_keeps_exiting_holds_up_no_other_service_s_restart(
    tmp_path: Path,
) -> None:
    stack = CrashingStack(options(tmp_path))
    stop = asyncio.Event()
    supervising = asyncio.create_task(
        _supervise(stack, stop, Console(file=io.StringIO()), poll_interval=0.01)
    )
    # The dispatcher starts again at once, exits again, and now waits RESTART_DELAYS[1].
    while len(stack.starts) < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    stack.down["notifier"] = 1
    exited_at = time.monotonic()
    while "notifier" not in [service for service, _ in stack.starts]:
        assert time.monotonic() - exited_at < RESTART_DELAYS[1] / 2, "waited for the dispatcher"
        await asyncio.sleep(0.01)
    stop.set()
    await supervising

    assert [service for service, _ in stack.starts] == ["dispatcher", "notifier"]
