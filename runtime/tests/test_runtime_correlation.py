"""Log records carry the correlation id of the work in hand, and only inside its block."""

from __future__ import annotations

import asyncio
import logging

import pytest
from webhook_tasks_runtime.logging import _CorrelationFilter, correlation_context


def tagged(message: str) -> str | None:
    record = logging.LogRecord("test", logging.INFO, __file__, 1, message, None, None)
    _CorrelationFilter().filter(record)
    return getattr(record, "correlation_id", None)


def test_a_record_inside_the_block_carries_its_id_and_none_outside() -> None:
    assert tagged("before") is None
    with correlation_context("c-1"):
        assert tagged("inside") == "c-1"
        with correlation_context("c-2"):
            assert tagged("nested") == "c-2"
        assert tagged("back in the outer block") == "c-1"
    assert tagged("after") is None


def test_the_id_is_dropped_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), correlation_context("c-1"):
        raise RuntimeError("failed")
    assert tagged("after the failure") is None


async def test_concurrent_tasks_each_keep_their_own_id() -> None:
    seen: dict[str, str | None] = {}

    async def work(correlation_id: str) -> None:
        with correlation_context(correlation_id):
            await asyncio.sleep(0.01)  # the other task runs its block meanwhile
            seen[correlation_id] = tagged("after the other's start")

    await asyncio.gather(work("c-1"), work("c-2"))

    assert seen == {"c-1": "c-1", "c-2": "c-2"}
    assert tagged("after both") is None
