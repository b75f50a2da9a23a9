"""`webhook-tasks up --demo`: a newcomer's first run, from start to Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest
from webhook_tasks_runtime.embedded import free_port

pytestmark = pytest.mark.e2e

STEPS = (
    "task dispatched",
    "external service accepted",
    "callback received",
    "chat comment written",
    "Generated Video",
)


def postgres_serving(data_dir: str) -> set[int]:
    """Return the live PostgreSQL processes of one data directory (other runs may have theirs)."""
    found = set()
    for process in psutil.process_iter(["name", "status", "cmdline"]):
        # A stopped server can linger as a zombie where PID 1 does not reap; it runs nothing.
        if process.info["name"] != "postgres" or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if data_dir in " ".join(process.info["cmdline"] or ()):
            found.add(process.pid)
    return found


def database_of(services: list[psutil.Process]) -> str:
    """Return the data directory of the PostgreSQL the services were given."""
    for service in services:
        with contextlib.suppress(psutil.Error):
            url = service.environ().get("DATABASE_URL", "")
            if "host=" in url:
                return url.split("host=", 1)[1].split("&", 1)[0]
    raise AssertionError("no service was given an embedded DATABASE_URL")


def read_lines(stream: Iterable[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_up_runs_the_demo_task_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    # Given both URLs, up uses them and starts no embedded server of its own.
    embedded = not (env.get("DATABASE_URL") and env.get("KAFKA_BOOTSTRAP_SERVERS"))
    up = subprocess.Popen(
        [sys.executable, "-m", "webhook_tasks_cli", "up", "--demo", "--gateway-port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(up.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 150
        while not all(step in "".join(output) for step in STEPS):
            if time.monotonic() > deadline or up.poll() is not None:
                pytest.fail("up did not show every step:\n" + "".join(output))
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        text = "".join(output)
        positions = [text.index(step) for step in STEPS]
        assert positions == sorted(positions), text
        assert (tmp_path / "webhook-tasks" / "stack.json").exists()
        descendants = psutil.Process(up.pid).children(recursive=True)
        assert len(descendants) >= 5  # four services, the demo service, the broker
        if embedded:
            data_dir = database_of(descendants)
            assert postgres_serving(data_dir), "up should run its own embedded PostgreSQL"

        # A service that dies is reported and started again, as Kubernetes would.
        (dispatcher,) = [p for p in descendants if "dispatcher" in " ".join(p.cmdline())]
        dispatcher.kill()
        deadline = time.monotonic() + 30
        while "dispatcher exited with code -9" not in "".join(output):
            assert time.monotonic() < deadline, "".join(output)
            with contextlib.suppress(queue.Empty):
                output.append(lines.get(timeout=1))
        while not [
            p
            for p in psutil.Process(up.pid).children()
            if "dispatcher" in " ".join(p.cmdline()) and p.pid != dispatcher.pid
        ]:
            assert time.monotonic() < deadline, "the dispatcher was not started again"
            time.sleep(0.2)
        descendants = psutil.Process(up.pid).children(recursive=True)
    finally:
        up.send_signal(signal.SIGINT)
        exit_code = up.wait(timeout=90)

    assert exit_code == 0, "".join(output)
    _, alive = psutil.wait_procs(descendants, timeout=15)
    assert not alive, f"left running: {alive}"
    if embedded:
        assert not postgres_serving(data_dir), "embedded PostgreSQL left running"
    with socket.socket() as probe:
        # SO_REUSEADDR ignores TIME_WAIT remnants but still fails if anything listens.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    assert not (tmp_path / "webhook-tasks" / "stack.json").exists()
