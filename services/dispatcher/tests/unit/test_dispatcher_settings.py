"""Settings: parsed and checked at start-up, secrets never echoed."""

from __future__ import annotations

import base64
import os

import pytest
from pydantic import ValidationError
from webhook_tasks_dispatcher.settings import DispatcherSettings

BASE = {
    "database_url": "postgresql://u:p@localhost/db",
    "kafka_bootstrap_servers": "localhost:9092",
    "callback_token_keys": f"k:base64:{base64.b64encode(os.urandom(32)).decode()}",
    "public_callback_base_url": "https://gateway.example.com",
}


def settings(**overrides: object) -> DispatcherSettings:
    # Values of several types, which the settings validate as they would the environment's.
    return DispatcherSettings(**(BASE | overrides))  # type: ignore[arg-type]


def test_defaults_give_the_documented_schedule() -> None:
    policy = settings().retry_policy()
    assert policy.schedule == (1.0, 5.0, 30.0, 120.0, 600.0)
    assert policy.max_attempts == 6
    assert policy.max_pending_seconds == 3600.0


def test_the_schedule_and_limits_are_configurable() -> None:
    policy = settings(
        retry_schedule="0.5, 2,10", retry_max_attempts=3, max_pending_seconds="900"
    ).retry_policy()
    assert policy.schedule == (0.5, 2.0, 10.0)
    assert policy.max_attempts == 3
    assert policy.max_pending_seconds == 900.0


@pytest.mark.parametrize("schedule", ["", "1,-1", "1,x", "1,nan", "inf", "1,Infinity"])
def test_a_bad_schedule_fails_at_start_up(schedule: str) -> None:
    with pytest.raises(ValidationError):
        settings(retry_schedule=schedule)


@pytest.mark.parametrize(
    "setting",
    [
        "retry_after_cap_seconds",
        "request_timeout_seconds",
        "circuit_cool_down_seconds",
        "max_pending_seconds",
    ],
)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_seconds_that_are_no_number_fail_at_start_up(setting: str, value: str) -> None:
    with pytest.raises(ValidationError, match=setting):
        settings(**{setting: value})


async def test_https_is_required_outside_dev_unless_allow_listed() -> None:
    from webhook_tasks_dispatcher.guard import UrlRefusedError

    with pytest.raises(UrlRefusedError, match="https"):
        await settings(environment="production").url_guard().check("http://93.184.216.34/")
    with pytest.raises(UrlRefusedError, match="https"):
        await settings(environment="test").url_guard().check("http://93.184.216.34/")
    await settings(environment="dev").url_guard().check("http://93.184.216.34/")
    allowed = settings(environment="production", outbound_allowlist="127.0.0.1/32, ::1/128")
    await allowed.url_guard().check("http://127.0.0.1:8080/")
    await allowed.url_guard().check("http://[::1]:8080/")


def test_signing_secrets_are_a_json_object_and_errors_quote_none() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    keys = settings(webhook_signing_secrets=f'{{"svc.example.com": "{secret}"}}').signing_keys()
    assert keys.key_for("https://svc.example.com/run") is not None
    assert keys.key_for("https://other.example.com/run") is None

    bad = "whsec_%%%not-base64-" + "s3cr3t"
    for value in (f'{{"*": "{bad}"}}', "not json " + bad, '["x"]'):
        with pytest.raises(ValidationError) as error:
            settings(webhook_signing_secrets=value)
        assert "s3cr3t" not in str(error.value)


def test_the_lease_must_outlast_a_request() -> None:
    with pytest.raises(ValidationError, match="dispatch_lease_seconds"):
        settings(request_timeout_seconds=60, dispatch_lease_seconds=30)
    with pytest.raises(ValidationError, match="twice request_timeout_seconds"):
        settings(request_timeout_seconds=60, dispatch_lease_seconds=120)
