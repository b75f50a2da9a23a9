"""`webhook-tasks up` beside a running stack, and up's end when its terminal closes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from webhook_tasks_runtime.embedded import free_port

from .test_e2e_up import database_of, postgres_serving, read_lines

pytestmark = pytest.mark.e2e

READY = "Ctrl-C stops everything."


def test_a_second_up_is_refused_and_a_hangup_stops_the_first_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    embedded = not (env.get("DATABASE_URL") and env.get("KAFKA_BOOTSTRAP_SERVERS"))
    command = [sys.executable, "-m", "webhook_tasks_cli", "up", "--gateway-port"]
    first = subprocess.Popen(
        [*command, str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(first.stdout, lines), daemon=True).start()
    output: list[str] = []
    logs = tmp_path / "webhook-tasks" / "logs"
    try:
        deadline = time.monotonic() + 120
        while READY not in "".join(output):
            if time.monotonic() > deadline or first.poll() is not None:
                pytest.fail("up did not start:\n" + "".join(output))
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        descendants = psutil.Process(first.pid).children(recursive=True)
        data_dir = database_of(descendants) if embedded else ""

        second = subprocess.run(
            [*command, str(free_port())], env=env, capture_output=True, text=True, timeout=60
        )

        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.startswith("error: a stack is already running"), second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        # The running stack keeps its logs, its stack file and its services.
        assert (logs / "dispatcher.log").stat().st_size > 0
        assert (tmp_path / "webhook-tasks" / "stack.json").exists()
        assert all(process.is_running() for process in descendants)
    finally:
        # What a closed terminal or a dropped SSH session sends.
        first.send_signal(signal.SIGHUP)
        exit_code = first.wait(timeout=90)

    assert exit_code == 0, "".join(output)
    _, alive = psutil.wait_procs(descendants, timeout=15)
    assert not alive, f"left running: {alive}"
    if embedded:
        assert not postgres_serving(data_dir), "embedded PostgreSQL left running"
    assert not (tmp_path / "webhook-tasks" / "stack.json").exists()
