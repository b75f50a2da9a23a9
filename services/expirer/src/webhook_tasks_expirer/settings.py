"""Settings of the expirer, read from environment variables."""

from __future__ import annotations

from pydantic import Field
from webhook_tasks_runtime.db import SCHEMA_NAME_PATTERN
from webhook_tasks_runtime.settings import DatabaseSettings


class ExpirerSettings(DatabaseSettings):
    """Where the expirer keeps deadlines and how it scans them."""

    database_schema: str = Field(default="expirer", pattern=SCHEMA_NAME_PATTERN)
    scan_batch_size: int = Field(default=500, ge=1, le=10_000)
    """How many due deadlines one transaction claims."""
    scan_poll_interval: float = Field(default=0.25, gt=0, le=10)
    """The longest the scanner sleeps, in seconds: bounds how late a deadline written by
    another replica is noticed."""
    reconcile_interval: float = Field(default=300.0, gt=0, le=86_400)
    """Seconds between reconciliation sweeps, a safety net: a sweep reads every pending
    deadline (about 3 s of database time at a million pending, on two cores)."""
    reconcile_grace: float = Field(default=60.0, gt=0)
    """Seconds after its deadline was announced an unfinished task counts as stuck and the
    deadline is announced again; also the least time between two announcements of one task."""
    reconcile_batch_size: int = Field(default=1000, ge=1, le=100_000)
    """How many tasks one repair statement handles."""
    finished_task_retention: float = Field(default=30 * 24 * 3600, gt=0)
    """Seconds a finished task's tombstone is kept; a replay of the lifecycle topic older
    than this brings back deadlines that fire at once and are refused by the dispatcher."""
