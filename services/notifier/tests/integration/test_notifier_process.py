from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest
from webhook_tasks_contracts import Topics

pytestmark = pytest.mark.integration


async def test_run_starts_from_the_environment_and_stops_cleanly_on_sigterm(
    infrastructure_env: dict[str, str], unique_schema: str, unique_topics: Topics
) -> None:
    env = {
        **os.environ,
        **infrastructure_env,
        "TOPIC_PREFIX": unique_topics.prefix,
        "DATABASE_SCHEMA": unique_schema,
        "LOG_FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webhook_tasks_notifier", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "service started" not in seen:
                line = await process.stderr.readline()
                assert line, f"the notifier exited early with {await process.wait()}"
                entry = json.loads(line)
                assert entry["service"] == "notifier"
                seen.append(entry["message"])
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, rest = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0
    assert "service stopped" in [json.loads(line)["message"] for line in rest.splitlines()]
