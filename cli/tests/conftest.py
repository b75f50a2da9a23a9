"""What the CLI tests share: running the CLI as a user would, unaffected by their shell."""

from __future__ import annotations

import os
import subprocess
import sys

from webhook_tasks_cli.config import SCHEMA_ENV_VARS

# Where the CLI finds the system; a test names what it means to use, never the caller's shell.
_LOCATION_ENV_VARS = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", *SCHEMA_ENV_VARS.values())
# What a command would send on the caller's behalf.
_CALLER_ENV_VARS = ("WEBHOOK_AUTH",)


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run Python with `args` and `env`, away from any running stack; return what it printed."""
    clean = {
        k: v for k, v in os.environ.items() if k not in (*_LOCATION_ENV_VARS, *_CALLER_ENV_VARS)
    }
    return subprocess.run(
        [sys.executable, *args],
        env={**clean, "XDG_STATE_HOME": "/nonexistent-state", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
