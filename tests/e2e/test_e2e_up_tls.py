"""`webhook-tasks up` against a platform's Kafka that takes clients only over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from webhook_tasks_runtime.embedded import free_port
from webhook_tasks_runtime.infra import Infrastructure
from webhook_tasks_runtime.pytest_plugin import TlsKafka

from .test_e2e_up import STEPS

pytestmark = pytest.mark.e2e

# Where a shell finds a system; the second shell below has none of them.
_LOCATION = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_ENABLE_IDEMPOTENCE")


async def test_up_and_a_command_in_another_shell_work_over_tls_only(
    infrastructure: Infrastructure, tls_kafka: TlsKafka, tmp_path: Path
) -> None:
    database = f"up_tls_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infrastructure.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    shell = {
        name: value
        for name, value in os.environ.items()
        if name not in _LOCATION and not name.upper().startswith("KAFKA_")
    }
    shell |= {"XDG_STATE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    platform = {
        "DATABASE_URL": urlsplit(infrastructure.database_url)
        ._replace(path=f"/{database}")
        .geturl(),
        "KAFKA_BOOTSTRAP_SERVERS": tls_kafka.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": str(tls_kafka.ca_file),
    }
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhook_tasks_cli",
        "up",
        "--demo",
        "--gateway-port",
        str(free_port()),
        env=shell | platform,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []

    async def read_output() -> None:
        assert up.stdout is not None
        async for line in up.stdout:
            output.append(line.decode())

    reading = asyncio.create_task(read_output())

    async def wait_for(*texts: str) -> None:
        deadline = time.monotonic() + 150
        while not all(text in "".join(output) for text in texts):
            if time.monotonic() > deadline or up.returncode is not None:
                pytest.fail(f"up did not show {texts}:\n" + "".join(output))
            await asyncio.sleep(0.2)

    try:
        await wait_for(*STEPS)
        stack = json.loads((tmp_path / "webhook-tasks" / "stack.json").read_text())
        assert stack["kafka_security"] == {
            "kafka_security_protocol": "SSL",
            "kafka_ssl_ca_file": str(tls_kafka.ca_file),
        }

        # Another shell, with no Kafka setting of its own: the stack file says how to connect.
        # The URL is refused by the SSRF guard, so the task fails at once, with its comment.
        submitted = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "webhook_tasks_cli", "submit", "--prompt", "a video",
             "--webhook-url", "http://10.255.255.1/run"],
            env=shell,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        await wait_for(f"chat comment written on task {submitted.stdout.strip()}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # up may have ended on its own
            up.send_signal(signal.SIGINT)
        exit_code = await asyncio.wait_for(up.wait(), 90)
        await reading
        admin = await asyncpg.connect(infrastructure.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
    assert exit_code == 0, "".join(output)
