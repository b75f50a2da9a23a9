"""Repeated Kafka client messages are written once per window, then counted; ours always pass."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import TypeAdapter
from webhook_tasks_contracts import Topics
from webhook_tasks_runtime import logging as runtime_logging
from webhook_tasks_runtime.embedded import EmbeddedKafka
from webhook_tasks_runtime.kafka import ConsumerSpec, ensure_topics
from webhook_tasks_runtime.logging import RepeatedMessageFilter
from webhook_tasks_runtime.pytest_plugin import service_logs as logs_of_a_service
from webhook_tasks_runtime.settings import DatabaseSettings
from webhook_tasks_runtime.worker import WorkerParts, WorkerResources, serve_worker

WINDOW = 30.0
REFUSED = "Unable connect to node with id %s: %s"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def written() -> list[logging.LogRecord]:
    """Collect the count records the filter writes."""
    return []


@pytest.fixture
def repeats(clock: Clock, written: list[logging.LogRecord]) -> RepeatedMessageFilter:
    return RepeatedMessageFilter(written.append, window_seconds=WINDOW, clock=clock)


def record(
    name: str = "aiokafka",
    msg: str = REFUSED,
    *args: object,
    level: int = logging.ERROR,
    exc_info: Any = None,
) -> logging.LogRecord:
    arguments = args or (111, ConnectionRefusedError(111, "Connection refused"))
    return logging.LogRecord(name, level, __file__, 1, msg, arguments, exc_info)


def passed(repeats: RepeatedMessageFilter, *records: logging.LogRecord) -> list[bool]:
    return [bool(repeats.filter(each)) for each in records]


def failure(error: BaseException) -> Any:
    try:
        raise error
    except BaseException as raised:
        return (type(raised), raised, raised.__traceback__)


def test_the_first_message_passes_and_its_repeats_within_the_window_do_not(
    repeats: RepeatedMessageFilter, clock: Clock, written: list[logging.LogRecord]
) -> None:
    assert passed(repeats, record()) == [True]
    for _ in range(50):
        clock.now += 0.1
        assert passed(repeats, record()) == [False]

    assert written == [], "nothing is said about the repeats before the window ends"


def test_after_the_window_one_record_says_how_many_repeats_were_held_back(
    repeats: RepeatedMessageFilter, clock: Clock, written: list[logging.LogRecord]
) -> None:
    repeats.filter(record())
    for _ in range(5):
        clock.now += 1
        repeats.filter(
            record("aiokafka", REFUSED, 111, ConnectionRefusedError(111, "refused again"))
        )
    clock.now += WINDOW

    assert passed(repeats, record()) == [True], "the message is written again"
    [summary] = written
    assert summary.name == "aiokafka"
    assert summary.levelno == logging.ERROR
    # Set on the record by the filter.
    assert summary.suppressed_repeats == 5  # type: ignore[attr-defined]
    assert summary.getMessage() == (
        "repeated 5 more times in 5.0 s, not written: "
        "Unable connect to node with id 111: [Errno 111] refused again"
    )
    assert summary.exc_info is None


def test_the_count_is_written_with_the_next_record_of_any_logger_once_the_window_ends(
    repeats: RepeatedMessageFilter, clock: Clock, written: list[logging.LogRecord]
) -> None:
    repeats.filter(record())
    repeats.filter(record())
    clock.now += WINDOW - 1
    repeats.filter(record("webhook_tasks_runtime.worker", "service stopping"))
    assert written == []

    clock.now += 1
    assert passed(repeats, record("webhook_tasks_runtime.worker", "service stopping")) == [True]

    # Set on the record by the filter.
    assert [each.suppressed_repeats for each in written] == [1]  # type: ignore[attr-defined]
    repeats.flush()
    assert len(written) == 1, "a count is written once"


def test_a_window_without_repeats_writes_no_count(
    repeats: RepeatedMessageFilter, clock: Clock, written: list[logging.LogRecord]
) -> None:
    repeats.filter(record())
    clock.now += WINDOW

    assert passed(repeats, record(), record()) == [True, False]
    repeats.flush()

    # Set on the record by the filter.
    assert [each.suppressed_repeats for each in written] == [1]  # type: ignore[attr-defined]


def test_flush_writes_the_counts_of_windows_not_yet_over(
    repeats: RepeatedMessageFilter, clock: Clock, written: list[logging.LogRecord]
) -> None:
    repeats.filter(record())
    repeats.filter(record())
    repeats.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", 1, 2))
    repeats.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", 1, 2))
    repeats.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", 1, 2))

    repeats.flush()

    # Set on the record by the filter.
    assert sorted((each.name, each.suppressed_repeats) for each in written) == [  # type: ignore[attr-defined]
        ("aiokafka", 1),
        ("aiokafka.consumer.fetcher", 2),
    ]
    assert passed(repeats, record()) == [True], "a flush ends the windows"


def test_different_messages_are_held_back_independently(repeats: RepeatedMessageFilter) -> None:
    assert passed(
        repeats,
        record(),
        record("aiokafka", "Unable to update metadata from %s", [111]),
        record("aiokafka.consumer.fetcher"),
        record(level=logging.WARNING),
        record("aiokafka", REFUSED, 111, ConnectionResetError(104, "Connection reset by peer")),
        record(),
        record("aiokafka", "Unable to update metadata from %s", [111]),
        record("aiokafka", REFUSED, 112, ConnectionRefusedError(111, "Connection refused")),
    ) == [True, True, True, True, True, False, False, False]


def test_a_repeated_traceback_is_dropped_with_its_line_and_a_new_error_passes(
    repeats: RepeatedMessageFilter, written: list[logging.LogRecord]
) -> None:
    timed_out = failure(TimeoutError("no answer"))

    assert passed(
        repeats,
        record("faststream", "connection failed", exc_info=timed_out),
        record("faststream", "connection failed", exc_info=timed_out),
        record("faststream", "connection failed", exc_info=failure(OSError("unreachable"))),
    ) == [True, False, True]
    repeats.flush()

    [summary] = written
    assert summary.getMessage().endswith("connection failed [TimeoutError: no answer]")
    assert summary.exc_info is None


def test_our_own_loggers_are_never_held_back(
    repeats: RepeatedMessageFilter, written: list[logging.LogRecord]
) -> None:
    for name in ("webhook_tasks_runtime.outbox", "webhook_tasks_gateway.app", "aiokafkaesque"):
        for _ in range(100):
            assert passed(repeats, record(name, "outbox flush failed; retrying")) == [True]

    repeats.flush()
    assert written == []


def test_threads_logging_at_once_lose_no_count(
    repeats: RepeatedMessageFilter, written: list[logging.LogRecord]
) -> None:
    outcomes: list[bool] = []
    start = threading.Barrier(8)

    def log_many() -> None:
        start.wait()
        mine = [bool(repeats.filter(record())) for _ in range(1000)]
        outcomes.extend(mine)

    threads = [threading.Thread(target=log_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    repeats.flush()

    assert outcomes.count(True) == 1
    # Set on the record by the filter.
    assert [each.suppressed_repeats for each in written] == [7999]  # type: ignore[attr-defined]


@pytest.fixture
def service_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Log as a service does (JSON lines); return a reader of the lines written."""
    with logs_of_a_service("test", level="INFO") as read:
        yield read


def test_faststream_lines_are_written_as_the_services_own(
    service_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    # FastStream logs a failed batch or commit on a logger it gave a coloured handler.
    logging.getLogger("faststream").error("the offsets could not be committed")

    lines = [line for line in service_logs() if line["logger"] == "faststream"]

    assert [(line["level"], line["message"]) for line in lines] == [
        ("error", "the offsets could not be committed")
    ]
    assert all(line["service"] == "test" for line in lines)


OUTAGE_SECONDS = 5


@pytest.mark.integration
async def test_a_worker_writes_a_few_kafka_client_lines_while_kafka_is_away(
    database: str,
    unique_schema: str,
    unique_topics: Topics,
    private_kafka: EmbeddedKafka,
    service_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    bootstrap = private_kafka.bootstrap_servers
    await ensure_topics(bootstrap, [unique_topics.task_requested])
    settings = DatabaseSettings(
        database_url=database,
        database_schema=unique_schema,
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=False,
        kafka_fetch_max_wait_ms=20,
        topic_prefix=unique_topics.prefix,
        environment="test",
    )

    async def ignore(_event: object) -> None:
        return None

    async def build(_resources: WorkerResources) -> WorkerParts:
        consumer: ConsumerSpec[Any] = ConsumerSpec(
            "logging-test",
            unique_topics.task_requested,
            f"{unique_topics.prefix}.logging-test",
            TypeAdapter(dict),
            ignore,
        )
        return WorkerParts(consumers=[consumer])

    def kafka_client_lines() -> list[dict[str, Any]]:
        return [line for line in service_logs() if line["logger"].startswith("aiokafka")]

    stop = asyncio.Event()
    service = asyncio.create_task(
        serve_worker(name="test", settings=settings, migrations=[], build=build, stop=stop)
    )
    try:
        deadline = time.monotonic() + 60
        while not any(line["message"] == "service started" for line in service_logs()):
            assert time.monotonic() < deadline, "the worker never started"
            assert not service.done(), service
            await asyncio.sleep(0.05)
        before = len(kafka_client_lines())

        await asyncio.to_thread(private_kafka.stop)
        await asyncio.sleep(OUTAGE_SECONDS)
        during = kafka_client_lines()[before:]
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
    runtime_logging._write_held_back_counts()

    # Unthrottled, the Kafka client wrote about 75 lines a second here.
    assert 1 <= len(during) < 20
    assert any(line["level"] == "error" for line in during), "the outage is reported at once"
    counts = [line for line in kafka_client_lines() if "suppressed_repeats" in line]
    assert counts, "how many repeats were held back is written at exit"
    assert sum(line["suppressed_repeats"] for line in counts) > 50
