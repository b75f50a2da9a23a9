"""Dispatcher settings, from environment variables."""

from __future__ import annotations

import json
import math
from datetime import timedelta

from pydantic import Field, SecretStr, field_validator, model_validator
from webhook_tasks_contracts import parse_callback_keys
from webhook_tasks_runtime.db import SCHEMA_NAME_PATTERN
from webhook_tasks_runtime.settings import CallbackTokenSettings, DatabaseSettings

from .breaker import CircuitBreakers
from .guard import Allowlist, UrlGuard
from .retry import RetryPolicy
from .sealing import RequestSealer
from .signing import SigningKeys


class DispatcherSettings(DatabaseSettings, CallbackTokenSettings):
    """Where the dispatcher keeps tasks, and how it calls external services."""

    database_schema: str = Field(default="dispatcher", pattern=SCHEMA_NAME_PATTERN)
    public_callback_base_url: str = Field(min_length=1, pattern=r"^https?://")
    """The gateway's address as external services reach it; callback URLs start with it."""
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    max_connections: int = Field(default=256, ge=1, le=10_000)
    max_connections_per_host: int = Field(default=32, ge=1, le=10_000)
    """Requests in flight to one external host; more wait for a free connection."""
    max_response_bytes: int = Field(default=64 * 1024, ge=1024)
    dispatch_lease_seconds: float = Field(default=120.0, gt=0)
    """How long a claimed request is left alone by other senders before it counts as abandoned."""
    retry_schedule: str = Field(default="1,5,30,120,600")
    """Upper bounds (seconds, comma-separated) of the jittered waits between attempts."""
    retry_max_attempts: int = Field(default=6, ge=1, le=100)
    retry_after_cap_seconds: float = Field(default=600.0, ge=0)
    """A Retry-After longer than this is shortened to it."""
    max_pending_seconds: float = Field(default=3600.0, gt=0)
    """How long after its arrival a task may wait for its request to be accepted: a retry or
    a hold (an open circuit, a busy host) that would end later fails the task at once."""
    outbound_allowlist: str = ""
    """Comma-separated CIDRs and host names the SSRF guard lets through (e.g. 127.0.0.1/32)."""
    dns_cache_seconds: float = Field(default=10.0, ge=0)
    webhook_signing_secrets: SecretStr = SecretStr("{}")
    """JSON object: base URL (scheme, host, port; path by segments), host or "*" -> "whsec_..."."""
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_cool_down_seconds: float = Field(default=30.0, gt=0)
    sender_poll_interval: float = Field(default=1.0, gt=0)
    sender_max_in_flight: int = Field(default=256, ge=1)
    """Requests being sent at once: new tasks' and retries' together."""
    deadline_wait_for_callbacks_seconds: float = Field(default=30.0, gt=0)
    """How long a deadline waits for the callbacks accepted before it to be applied, before its
    batch fails and comes again."""
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    """On SIGTERM, how long requests being sent may take to finish before they are handed back."""

    @field_validator("retry_schedule")
    @classmethod
    def _schedule_parses(cls, value: str) -> str:
        steps = [float(step) for step in value.split(",") if step.strip()]
        if not steps or not all(0 < step < math.inf for step in steps):
            raise ValueError("retry_schedule needs positive seconds, comma-separated")
        return value

    @field_validator("webhook_signing_secrets")
    @classmethod
    def _secrets_parse(cls, value: SecretStr) -> SecretStr:
        # Fail at start-up; the errors name no secret.
        _signing_keys(value)
        return value

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> DispatcherSettings:
        # An attempt may wait up to the request timeout for a slot at its host, then as long
        # again for the answer: its claim must outlast both.
        if self.dispatch_lease_seconds <= 2 * self.request_timeout_seconds:
            raise ValueError(
                "dispatch_lease_seconds must be longer than twice request_timeout_seconds"
            )
        return self

    def retry_policy(self) -> RetryPolicy:
        """Return the retry schedule."""
        return RetryPolicy(
            schedule=tuple(float(step) for step in self.retry_schedule.split(",") if step.strip()),
            max_attempts=self.retry_max_attempts,
            retry_after_cap_seconds=self.retry_after_cap_seconds,
            max_pending_seconds=self.max_pending_seconds,
        )

    def url_guard(self) -> UrlGuard:
        """Return the SSRF guard; https is required outside dev unless a host is allow-listed."""
        return UrlGuard(
            allow=Allowlist.parse(self.outbound_allowlist.split(",")),
            require_https=self.environment != "dev",
            cache_seconds=self.dns_cache_seconds,
        )

    def signing_keys(self) -> SigningKeys:
        """Return the per-endpoint signing secrets."""
        return _signing_keys(self.webhook_signing_secrets)

    def request_sealer(self) -> RequestSealer:
        """Return the sealer of credentials kept with pending requests (callback keys derived)."""
        return RequestSealer(parse_callback_keys(self.callback_token_keys.get_secret_value()))

    def circuit_breakers(self) -> CircuitBreakers:
        """Return fresh per-host circuit breakers."""
        return CircuitBreakers(
            failure_threshold=self.circuit_failure_threshold,
            cool_down=timedelta(seconds=self.circuit_cool_down_seconds),
        )


def _signing_keys(value: SecretStr) -> SigningKeys:
    try:
        raw = json.loads(value.get_secret_value() or "{}")
    except ValueError:
        raise ValueError("webhook_signing_secrets must be a JSON object") from None
    if not isinstance(raw, dict) or not all(isinstance(item, str) for item in raw.values()):
        raise ValueError('webhook_signing_secrets must map targets to "whsec_..." strings')
    return SigningKeys({target: SecretStr(secret) for target, secret in raw.items()})
