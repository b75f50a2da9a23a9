"""What the native load generators (wrk, h2load) share: running one to completion."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence


async def run_generator(command: Sequence[str]) -> tuple[int, bytes, bytes]:
    """Run `command`; return its exit code, stdout and stderr. Kill it if we are cancelled."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout, stderr
