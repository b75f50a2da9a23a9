"""Bad configuration is one line on stderr and a non-zero exit, never a traceback or a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from webhook_tasks_cli.operations import OperationError, send_callback

from .conftest import run

PASSWORD = "Zk3/q9#Lm"
SUBMIT = (
    "-m",
    "webhook_tasks_cli",
    "submit",
    "--webhook-url",
    "https://svc.example/",
    "--prompt",
    "a video",
)


@pytest.mark.parametrize("url", [f"postgresql://u:{PASSWORD}@db.internal:5432/tasks", "notaurl"])
def test_an_unusable_database_url_is_one_line_without_the_password(url: str) -> None:
    done = run(
        "-m",
        "webhook_tasks_cli",
        "show",
        "x",
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        DATABASE_URL=url,
    )

    assert done.returncode == 1
    assert done.stderr.startswith("error: DATABASE_URL is not a PostgreSQL URL")
    assert "Traceback" not in done.stderr
    assert "Zk3" not in done.stderr + done.stdout


def test_an_unusable_kafka_address_is_one_line() -> None:
    done = run(
        *SUBMIT,
        KAFKA_BOOTSTRAP_SERVERS="host:abc",
    )

    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port], not 'host:abc'"
    )


def test_an_out_of_range_database_port_is_one_line() -> None:
    done = run(
        "-m",
        "webhook_tasks_cli",
        "show",
        "x",
        DATABASE_URL="postgresql://u:hunter2@127.0.0.1:99999/db",
    )

    assert done.returncode == 1
    assert done.stderr.strip() == "error: the port in DATABASE_URL must be from 1 to 65535"
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize("servers", ["127.0.0.1:99999", "127.0.0.1:1"])
def test_an_unusable_or_unreachable_kafka_is_our_one_line_alone(servers: str) -> None:
    done = run(*SUBMIT, KAFKA_BOOTSTRAP_SERVERS=servers)

    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(
        ("error: KAFKA_BOOTSTRAP_SERVERS must be", "error: cannot reach Kafka")
    ), done.stderr


@pytest.mark.parametrize(
    "module",
    [
        "webhook_tasks_dispatcher",
        "webhook_tasks_gateway",
        "webhook_tasks_expirer",
        "webhook_tasks_notifier",
    ],
)
def test_a_service_run_as_a_program_reports_missing_settings_in_one_line(module: str) -> None:
    done = run("-m", module)

    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid settings: ")
    assert "KAFKA_BOOTSTRAP_SERVERS: Field required" in done.stderr
    assert "Traceback" not in done.stderr


def test_kafka_security_settings_that_cannot_work_are_one_line_without_the_password() -> None:
    done = run(
        *SUBMIT,
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_USERNAME="svc",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )

    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: KAFKA_SECURITY_PROTOCOL SASL_SSL needs KAFKA_SASL_MECHANISM"
    )
    assert "Zk3" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("module", "setting"),
    [
        ("webhook_tasks_dispatcher", "KAFKA_SSL_CA_FILE"),
        ("webhook_tasks_gateway", "KAFKA_SSL_CA_FILE"),
    ],
)
def test_a_service_given_a_tls_file_it_cannot_read_says_which_in_one_line(
    module: str, setting: str, tmp_path: Path
) -> None:
    done = run(
        "-m",
        module,
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        DATABASE_URL="postgresql://u@127.0.0.1:1/db",
        CALLBACK_TOKEN_KEYS="k:base64:" + "A" * 44,
        PUBLIC_CALLBACK_BASE_URL="https://gw.example",
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CA_FILE=str(tmp_path / "missing-ca.pem"),
    )

    assert done.returncode == 1
    assert done.stderr.startswith(f"error: invalid settings: {setting} cannot be used"), done.stderr
    assert "Traceback" not in done.stderr


CALLBACK_TOKEN_KEYS = "k1:base64:" + "Zk3q9" * 8 + "Lmk="


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("http://127.0.0.1:99999", "must have a port from 1 to 65535"),
        ("http://gw.example/\udcff", "must be printable UTF-8 text"),
        ("gw.example", "must be an absolute http or https URL"),
    ],
)
def test_a_gateway_url_no_callback_can_be_posted_to_is_one_line(base_url: str, reason: str) -> None:
    done = run(
        "-m",
        "webhook_tasks_cli",
        "callback",
        "c1",
        "success",
        PUBLIC_CALLBACK_BASE_URL=base_url,
        CALLBACK_TOKEN_KEYS=CALLBACK_TOKEN_KEYS,
    )

    assert done.returncode == 1
    assert done.stderr.strip() == f"error: the gateway's URL (PUBLIC_CALLBACK_BASE_URL) {reason}"
    assert "Zk3" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("failure", "named"),
    [
        (ExceptionGroup("connecting", [OverflowError("port must be 0-65535")]), "OverflowError"),
        (httpx.InvalidURL("http://gw.example/v1/callbacks/c1/s3cret"), "InvalidURL"),
        (
            UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
            "UnicodeEncodeError",
        ),
    ],
)
async def test_a_callback_that_cannot_be_sent_is_one_line_without_the_url(
    failure: Exception, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def post(*args: Any, **kwargs: Any) -> httpx.Response:
        raise failure

    monkeypatch.setattr(httpx.AsyncClient, "post", post)

    with pytest.raises(OperationError) as error:
        await send_callback(
            None,
            "c1",
            {"correlationId": "c1", "status": "success"},
            callback_url="http://gw.example/v1/callbacks/c1/s3cret",
        )

    assert str(error.value) == f"cannot reach the gateway: {named}"
