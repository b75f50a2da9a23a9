"""Settings of the notifier, read from environment variables."""

from __future__ import annotations

from pydantic import AnyHttpUrl, DirectoryPath, Field, SecretStr, field_validator, model_validator
from standardwebhooks import Webhook
from webhook_tasks_runtime.db import SCHEMA_NAME_PATTERN
from webhook_tasks_runtime.settings import DatabaseSettings


class NotifierSettings(DatabaseSettings):
    """Where the notifier keeps comments and which comment templates it renders."""

    database_schema: str = Field(default="notifier", pattern=SCHEMA_NAME_PATTERN)
    notifier_templates_dir: DirectoryPath | None = None
    """A folder whose `result.md`, `error.md`, `expired.md`, `progress.md`, `late_result.md`
    replace the defaults."""

    @property
    def consumer_group(self) -> str:
        """Return the Kafka consumer group of this deployment's notifiers."""
        return f"{self.topic_prefix}.notifier"

    notification_sink_url: AnyHttpUrl | None = None
    """Where to POST every comment and notification as well; off when unset. No `user:pass@`:
    requests are authenticated by their signature."""
    notification_sink_secret: SecretStr | None = None
    """The Standard Webhooks secret (`whsec_<base64>`) the sink's requests are signed with."""
    notification_sink_max_attempts: int = Field(default=12, ge=1, le=100)
    notification_sink_first_retry: float = Field(default=1.0, gt=0)
    """Seconds before the first retry; each later wait doubles, up to the longest."""
    notification_sink_longest_retry: float = Field(default=600.0, gt=0)
    notification_sink_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds one POST to the sink may take."""
    notification_sink_retention: float = Field(default=7 * 24 * 3600, gt=0)
    """Seconds a delivery given up on is kept (to see what the sink missed) before it is pruned."""

    @field_validator("notification_sink_url")
    @classmethod
    def _sink_url_without_credentials(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        # httpx would send them as an Authorization header, which the aiohttp transport refuses
        # on every POST; the signature already authenticates each request. Quotes nothing.
        if value is not None and (value.username is not None or value.password is not None):
            raise ValueError(
                "NOTIFICATION_SINK_URL must not hold a user name or password (user:pass@): "
                "the sink authenticates each request with its Standard Webhooks signature "
                "(NOTIFICATION_SINK_SECRET); have the receiver verify that instead"
            )
        return value

    @field_validator("notification_sink_secret")
    @classmethod
    def _secret_usable(cls, value: SecretStr | None) -> SecretStr | None:
        # Refused at start-up rather than on the first delivery; the error never quotes it.
        if value is not None:
            try:
                Webhook(value.get_secret_value())
            except Exception:
                raise ValueError("not a Standard Webhooks secret (whsec_<base64>)") from None
        return value

    @model_validator(mode="after")
    def _sink_is_signed(self) -> NotifierSettings:
        if self.notification_sink_url is not None and self.notification_sink_secret is None:
            raise ValueError("NOTIFICATION_SINK_URL needs NOTIFICATION_SINK_SECRET")
        return self
