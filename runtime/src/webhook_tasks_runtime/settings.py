"""Settings every service shares, read from environment variables and validated at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from webhook_tasks_contracts import DEFAULT_TOPIC_PREFIX, Topics

Environment = Literal["dev", "test", "production"]


class RuntimeSettings(BaseSettings):
    """Connection and logging settings of one service process."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    environment: Environment = "production"
    kafka_bootstrap_servers: str = Field(min_length=1)
    kafka_enable_idempotence: bool = True
    """On against Apache Kafka; the embedded broker cannot do it, so `up` turns it off."""
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @property
    def topics(self) -> Topics:
        """Return the topic names of this deployment."""
        return Topics(self.topic_prefix)


class DatabaseSettings(RuntimeSettings):
    """Settings of a service that owns tables."""

    database_url: SecretStr
    database_schema: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """The PostgreSQL schema this service owns; each service sets its own default."""
    database_pool_size: int = Field(default=10, ge=1, le=200)
