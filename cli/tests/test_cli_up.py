"""`webhook-tasks up` stops everything it started, whatever became of its step printer."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest
from rich.console import Console
from rich.errors import MarkupError
from webhook_tasks_cli.config import StackConfig, write_stack_file
from webhook_tasks_cli.stack import Stack, StackOptions
from webhook_tasks_cli.up import _shut_down
from webhook_tasks_cli.watch import EventWatcher
from webhook_tasks_contracts import Topics


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
    stack = StoppedStack(
        StackOptions(
            database_url="postgresql://u@127.0.0.1:1/db",
            kafka_bootstrap_servers="127.0.0.1:1",
            kafka_enable_idempotence=False,
            callback_token_keys="k:base64:" + "A" * 44,
            gateway_port=1,
            log_dir=tmp_path,
        )
    )

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
