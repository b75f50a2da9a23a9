"""Dispatcher settings, from environment variables."""

from __future__ import annotations

from pydantic import Field
from webhook_tasks_runtime.settings import CallbackTokenSettings, DatabaseSettings


class DispatcherSettings(DatabaseSettings, CallbackTokenSettings):
    """Where the dispatcher keeps tasks, and how it calls external services."""

    database_schema: str = Field(default="dispatcher", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    public_callback_base_url: str = Field(min_length=1, pattern=r"^https?://")
    """The gateway's address as external services reach it; callback URLs start with it."""
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_connections: int = Field(default=256, ge=1, le=10_000)
    max_response_bytes: int = Field(default=64 * 1024, ge=1024)
    dispatch_lease_seconds: float = Field(default=120.0, gt=0)
    """How long a claimed task is left alone by other replicas before it counts as abandoned."""
