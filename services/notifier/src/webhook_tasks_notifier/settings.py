"""Settings of the notifier, read from environment variables."""

from __future__ import annotations

from pydantic import DirectoryPath, Field
from webhook_tasks_runtime.settings import DatabaseSettings


class NotifierSettings(DatabaseSettings):
    """Where the notifier keeps comments and which comment templates it renders."""

    database_schema: str = Field(default="notifier", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    notifier_templates_dir: DirectoryPath | None = None
    """A folder whose `result.md`, `error.md`, `expired.md`, `progress.md` replace the defaults."""

    @property
    def consumer_group(self) -> str:
        """Return the Kafka consumer group of this deployment's notifiers."""
        return f"{self.topic_prefix}.notifier"
