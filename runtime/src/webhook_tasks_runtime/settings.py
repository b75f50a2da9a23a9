"""Settings every service shares, read from environment variables and validated at start-up."""

from __future__ import annotations

import re
import urllib.parse
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from webhook_tasks_contracts import (
    DEFAULT_TOPIC_PREFIX,
    CallbackTokens,
    Topics,
    parse_callback_keys,
)

from .db import SCHEMA_NAME_PATTERN
from .kafka_security import KafkaSecuritySettings

Environment = Literal["dev", "test", "production"]

KAFKA_MAX_MESSAGE_BYTES = 1_179_648
"""The default largest record a service's producer sends (1.125 MiB), and the limit of the
callback-received topic, so an event carrying a callback at the gateway's default limits fits.
deploy/kubernetes/topics.yaml and `webhook-tasks up` give the topics the services publish to
the same max.message.bytes; Kafka's default is 1 MiB."""

_DATABASE_URL_ERROR = (
    "DATABASE_URL cannot be read as postgresql://user:password@host:5432/database; "
    "percent-encode the characters / ? # @ : % in the user name and password (/ as %2F, # as %23)"
)
_HOST_AND_PORT = re.compile(r"(\[[^\]]+\]|[^\[\]:,]+)(:[0-9]*)?")


class RuntimeSettings(KafkaSecuritySettings):
    """Connection and logging settings of one service process."""

    # hide_input_in_errors: a bad DATABASE_URL or key must not be echoed in the error.
    # allow_inf_nan: "inf" or "nan" seconds would pass a bound such as ge=0 and fail later,
    # on every use, instead of at start-up.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    environment: Environment = "production"
    kafka_bootstrap_servers: str = Field(min_length=1)
    kafka_enable_idempotence: bool = True
    """On against Apache Kafka; the embedded broker cannot do it, so `up` turns it off."""
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000)
    """How long a fetch may wait for data. Kafka answers as soon as data arrives; the
    embedded broker always waits this long, so `up` and the tests shorten it."""
    kafka_poll_interval_ms: int = Field(default=20, ge=1, le=1_000)
    """How long an idle consumer waits before it looks again for fetched events: the most an
    event arriving at an idle service waits beyond its fetch. Shorter costs idle CPU."""
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    otel_traces_exporter: Literal["none", "otlp", "console"] = "none"
    """Where spans go (OTLP over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, or stderr); with "none"
    no span is made and no trace context is sent on."""
    otel_service_name: str | None = None
    """The service name spans carry; webhook-tasks-<service> when unset."""

    @property
    def topics(self) -> Topics:
        """Return the topic names of this deployment."""
        return Topics(self.topic_prefix)


class DatabaseSettings(RuntimeSettings):
    """Settings of a service that owns tables."""

    database_url: SecretStr
    database_schema: str = Field(pattern=SCHEMA_NAME_PATTERN)
    """The PostgreSQL schema this service owns; each service sets its own default."""
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Longest wait for PostgreSQL to connect, or to answer one statement; the work is then
    retried as while PostgreSQL is away. Migrations are not bound by it."""
    kafka_max_message_bytes: int = Field(default=KAFKA_MAX_MESSAGE_BYTES, ge=1024, le=64 * 2**20)
    """The largest record the producer sends (its max_request_size); the topics it publishes to
    must allow as much in their max.message.bytes."""
    health_host: str = "0.0.0.0"
    health_port: int | None = Field(default=None, ge=0, le=65535)
    """Where /healthz, /readyz and /metrics are served; unset serves none (local runs, tests)."""

    @field_validator("database_url")
    @classmethod
    def _url_parses(cls, value: SecretStr) -> SecretStr:
        # asyncpg's own errors quote the part of the URL it could not read, often the password.
        check_database_url(value.get_secret_value())
        return value


def check_database_url(url: str) -> None:
    """Raise ValueError, quoting nothing of `url`, unless asyncpg reads it as it was meant."""
    try:
        # urlparse, as asyncpg does: it splits ";params" off the path too.
        parts = urllib.parse.urlparse(url)
        if parts.query:
            urllib.parse.parse_qs(parts.query, strict_parsing=True)
    except ValueError:
        raise ValueError(_DATABASE_URL_ERROR) from None
    hosts = parts.netloc.rpartition("@")[2]
    well_formed = (
        parts.scheme in ("postgresql", "postgres")
        # A second "@", an "@" past the host or a fragment: an unencoded @ / ? or # in the
        # password ended it early, and asyncpg would take the rest for a host, port or database.
        and parts.netloc.count("@") <= 1
        and "@" not in parts.path + parts.params + parts.query
        and not parts.fragment
        # No host means the local server (or ?host=/socket/dir); else host[:port],... as asyncpg.
        and (not hosts or all(_HOST_AND_PORT.fullmatch(spec) for spec in hosts.split(",")))
    )
    if not well_formed:
        raise ValueError(_DATABASE_URL_ERROR)


class CallbackTokenSettings(BaseSettings):
    """The keys that mint (dispatcher) and verify (gateway) callback tokens."""

    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    callback_token_keys: SecretStr
    """"id:secret,id:secret", newest first; a secret may be "base64:<bytes>" (32 bytes or more)."""

    @field_validator("callback_token_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr) -> SecretStr:
        # Fail at start-up, not on the first callback; errors never quote a secret.
        parse_callback_keys(value.get_secret_value())
        return value

    def callback_tokens(self) -> CallbackTokens:
        """Return the token minter/verifier for the configured keys."""
        return CallbackTokens(parse_callback_keys(self.callback_token_keys.get_secret_value()))
