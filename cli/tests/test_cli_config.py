"""Each command reads the settings it uses, from the environment, else from the running stack."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from webhook_tasks_cli import config
from webhook_tasks_cli.config import (
    STACK_FILE_ENV,
    ConfigurationError,
    GatewayConfig,
    StackConfig,
    database_url,
    gateway_config,
    kafka_config,
    write_stack_file,
)

from .conftest import run

ELSEWHERE = "postgresql://u@db.elsewhere:5432/tasks"
_SETTINGS = (
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "PUBLIC_CALLBACK_BASE_URL",
    "GATEWAY_URL",
    "CALLBACK_TOKEN_KEYS",
)


@pytest.fixture
def no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI at a stack file that does not exist yet, with none of the settings set."""
    path = tmp_path / "stack.json"
    monkeypatch.setenv(STACK_FILE_ENV, str(path))
    for name in _SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def stack(no_stack: Path) -> StackConfig:
    """Describe a running stack, as `webhook-tasks up` does."""
    config = StackConfig(
        kafka_bootstrap_servers="127.0.0.1:19092",
        database_url="postgresql://u@127.0.0.1:15432/stack",
        gateway_url="http://127.0.0.1:8080",
        callback_token_keys="k1:base64:" + "A" * 44,
        pid=os.getpid(),
    )
    write_stack_file(config)
    return config


def test_show_reads_the_database_url_given_over_the_stack_s(
    stack: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", ELSEWHERE)

    assert database_url() == ELSEWHERE


def test_show_reads_the_stack_s_database_whatever_kafka_is_set_to(
    stack: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")

    assert database_url() == stack.database_url


def test_callback_looks_the_correlation_id_up_in_the_database_url_given(
    stack: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", ELSEWHERE)

    assert gateway_config() == GatewayConfig(
        stack.gateway_url, stack.callback_token_keys, ELSEWHERE
    )


def test_another_gateway_is_never_checked_against_the_local_stack_s_database(
    stack: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBLIC_CALLBACK_BASE_URL", "https://gw.example")
    monkeypatch.setenv("CALLBACK_TOKEN_KEYS", "k2:base64:" + "B" * 44)

    assert gateway_config() == GatewayConfig("https://gw.example", "k2:base64:" + "B" * 44, None)


def test_submit_reads_kafka_given_over_the_stack_s(
    stack: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.elsewhere:9092")
    monkeypatch.setenv("DATABASE_URL", ELSEWHERE)

    assert kafka_config().kafka_bootstrap_servers == "kafka.elsewhere:9092"


def test_without_a_stack_each_command_asks_only_for_what_it_uses(no_stack: Path) -> None:
    with pytest.raises(ConfigurationError) as show:
        database_url()
    with pytest.raises(ConfigurationError) as submit:
        kafka_config()
    with pytest.raises(ConfigurationError) as callback:
        gateway_config()

    assert str(show.value).endswith("or set DATABASE_URL")
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(submit.value)
    assert "DATABASE_URL" not in str(submit.value)
    assert "PUBLIC_CALLBACK_BASE_URL and CALLBACK_TOKEN_KEYS" in str(callback.value)
    assert "KAFKA_BOOTSTRAP_SERVERS" not in str(callback.value)


def test_show_given_only_a_database_url_goes_there() -> None:
    done = run("-m", "webhook_tasks_cli", "show", "x", DATABASE_URL="postgresql://u@127.0.0.1:1/db")

    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach PostgreSQL"), done.stderr


def describe_stack(path: Path, stack: StackConfig, pid: object) -> None:
    """Write the stack file as `up` would, but naming `pid` as its process."""
    path.write_text(json.dumps({**dataclasses.asdict(stack), "pid": pid}))


@pytest.mark.parametrize("pid", ["abc", 99999999999999999999, 0, -1, True, 1.5, [1]])
def test_a_stack_file_naming_no_process_describes_no_running_stack(
    stack: StackConfig, no_stack: Path, pid: object
) -> None:
    describe_stack(no_stack, stack, pid)

    with pytest.raises(ConfigurationError) as error:
        database_url()

    assert str(error.value) == (
        f"no running stack found ({no_stack} names no process): start one with "
        "`webhook-tasks up`, or set DATABASE_URL"
    )


@pytest.fixture
def other_program() -> Iterator[int]:
    """Run a program that is not webhook-tasks; return its pid."""
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("no sleep program to run")
    process = subprocess.Popen([sleep, "60"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="no /proc to tell by")
def test_a_stack_whose_process_is_now_another_program_is_not_running(
    stack: StackConfig, no_stack: Path, other_program: int
) -> None:
    describe_stack(no_stack, stack, other_program)

    with pytest.raises(ConfigurationError) as error:
        database_url()

    assert f"(process {other_program} of {no_stack} is not webhook-tasks)" in str(error.value)


def test_without_proc_a_live_process_is_taken_for_the_stack(
    stack: StackConfig,
    no_stack: Path,
    other_program: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config, "PROC", tmp_path / "no-proc")
    describe_stack(no_stack, stack, other_program)

    assert database_url() == stack.database_url
