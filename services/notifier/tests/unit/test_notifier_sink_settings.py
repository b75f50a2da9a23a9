"""The sink's settings refuse an unsigned or unusable configuration; its backoff grows, capped."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from webhook_tasks_notifier import metrics  # noqa: F401 (registers the notifier's metrics)
from webhook_tasks_notifier.settings import NotifierSettings
from webhook_tasks_notifier.sink import Backoff, lease_for

BASE: dict[str, Any] = {
    "database_url": "postgresql://db/x",
    "kafka_bootstrap_servers": "kafka:9092",
}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_sink_is_off_unless_configured() -> None:
    assert NotifierSettings(**BASE).notification_sink_url is None


def test_a_sink_url_without_a_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="NOTIFICATION_SINK_SECRET"):
        NotifierSettings(**BASE, notification_sink_url="https://chat.example.com/hooks")


def test_an_unusable_secret_is_refused_without_being_quoted() -> None:
    with pytest.raises(ValidationError) as refused:
        NotifierSettings(
            **BASE,
            notification_sink_url="https://chat.example.com/hooks",
            notification_sink_secret="whsec_%%not-base64%%",
        )
    assert "not a Standard Webhooks secret" in str(refused.value)
    assert "not-base64" not in str(refused.value)


def test_a_signed_sink_is_accepted() -> None:
    settings = NotifierSettings(
        **BASE,
        notification_sink_url="https://chat.example.com/hooks",
        notification_sink_secret=SECRET,
    )
    assert str(settings.notification_sink_url) == "https://chat.example.com/hooks"


@pytest.mark.parametrize(
    "url",
    [
        "https://sinkbot:hunter2-pw@chat.example.com/hooks",
        "https://sinkbot@chat.example.com/hooks",
        "https://:hunter2-pw@chat.example.com/hooks",
    ],
)
def test_a_sink_url_with_credentials_is_refused_without_quoting_them(url: str) -> None:
    # The aiohttp transport refuses such a URL on every POST: it would never deliver.
    with pytest.raises(ValidationError) as refused:
        NotifierSettings(**BASE, notification_sink_url=url, notification_sink_secret=SECRET)
    message = str(refused.value)
    assert "must not hold a user name or password" in message
    assert "Standard Webhooks signature (NOTIFICATION_SINK_SECRET)" in message
    assert "hunter2" not in message
    assert "sinkbot" not in message


def test_backoff_doubles_up_to_the_longest_wait() -> None:
    backoff = Backoff(first=timedelta(seconds=1), longest=timedelta(seconds=10))
    assert [backoff.after(n).total_seconds() for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_deliveries_given_up_on_are_kept_a_week_by_default() -> None:
    assert NotifierSettings(**BASE).notification_sink_retention == 7 * 24 * 3600
    with pytest.raises(ValidationError):
        NotifierSettings(**BASE, notification_sink_retention=0)


@pytest.mark.parametrize(("timeout", "lease"), [(1, 60), (10, 60), (25, 60), (30, 70), (300, 610)])
def test_a_claimed_delivery_stays_leased_past_its_post_and_its_record(
    timeout: float, lease: int
) -> None:
    # The record is tried for up to half the lease: both must end before another replica
    # may take the delivery, or a comment would have two texts in flight.
    assert lease_for(timeout) == timedelta(seconds=lease)
    assert lease_for(timeout) / 2 >= timedelta(seconds=timeout)


def test_each_sink_outcome_is_counted_from_zero_before_it_first_happens() -> None:
    for outcome in ("delivered", "failed", "given_up"):
        value = REGISTRY.get_sample_value(
            "webhook_tasks_notifier_sink_attempts_total", {"outcome": outcome}
        )
        assert value is not None, outcome
