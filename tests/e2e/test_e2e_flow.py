"""The product's main job, end to end, through the real services on real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import TypeAdapter
from webhook_tasks_cli.operations import TaskReport, publish_task
from webhook_tasks_contracts import CallbackReceived, TaskMetadata, TaskRequested, callback_url

from .conftest import RunningSystem, finished, terminal_comments, unique_task_id, wait_until
from .e2e_bursts import read_topic

pytestmark = pytest.mark.e2e


def demo_task(system: RunningSystem, task_id: str, **params: object) -> TaskRequested:
    # The parameters are JSON values; this one is the timeout's number.
    timeout = int(params.pop("timeoutSeconds", 120))  # type: ignore[call-overload]
    return TaskRequested(
        task_id=task_id,
        user_id="user-1",
        project_id="project-1",
        prompt="a lighthouse at dawn",
        followers=["follower-1"],
        task_metadata=TaskMetadata(
            is_webhook_task=True,
            webhook_url=f"{system.demo_url}/generate-video",
            webhook_auth="Bearer e2e-secret-value",
            webhook_params=params,
            timeout_seconds=timeout,
        ),
    )


async def waiting_for_callbacks(system: RunningSystem, label: str) -> tuple[str, str, str]:
    """Dispatch a task the demo service never calls back; return its ids and callback URL."""
    task_id = unique_task_id(label)
    await publish_task(system.config, demo_task(system, task_id, outcome="never"))
    (report,) = await wait_until(
        lambda: system.reports(task_id),
        lambda r: len(r) == 1 and r[0].task.status.value == "initiated",
    )
    assert system.config.gateway_url
    url = system.tokens.callback_url(system.config.gateway_url, report.task.correlation_id)
    return task_id, report.task.correlation_id, url


async def test_success_becomes_one_result_comment(system: RunningSystem) -> None:
    task_id = unique_task_id("success")
    await publish_task(
        system.config, demo_task(system, task_id, outcome="success", delaySeconds=0.2)
    )

    (report,) = await wait_until(lambda: system.reports(task_id), finished)

    assert report.task.status.value == "completed"
    assert report.task.result_url.endswith(f"/results/{report.task.correlation_id}.mp4")
    (comment,) = terminal_comments(report)
    assert comment.kind == "result"
    assert "Generated Video" in comment.text
    assert report.task.result_url in comment.text
    assert "125 MB" in comment.text
    assert [attempt.outcome for attempt in report.attempts] == ["accepted"]
    assert sorted(n.user_id for n in report.notifications) == ["follower-1", "user-1"]
    assert "e2e-secret-value" not in repr(report)


async def test_error_callback_becomes_one_error_comment(system: RunningSystem) -> None:
    task_id = unique_task_id("error")
    await publish_task(system.config, demo_task(system, task_id, outcome="error", delaySeconds=0.2))

    (report,) = await wait_until(lambda: system.reports(task_id), finished)

    assert report.task.status.value == "failed"
    (comment,) = terminal_comments(report)
    assert comment.kind == "error"
    assert "Rendering failed" in comment.text


async def test_silent_service_expires_the_task_at_its_deadline(system: RunningSystem) -> None:
    task_id = unique_task_id("timeout")
    await publish_task(system.config, demo_task(system, task_id, outcome="never", timeoutSeconds=2))

    (report,) = await wait_until(lambda: system.reports(task_id), finished)

    assert report.task.status.value == "expired"
    (comment,) = terminal_comments(report)
    assert comment.kind == "expired"
    assert report.task.deadline_at is not None
    assert report.task.finished_at is not None
    lateness = (report.task.finished_at - report.task.deadline_at).total_seconds()
    assert 0 <= lateness < 5, f"expired {lateness:.2f}s after its deadline"


async def test_dispatch_refused_by_the_service_fails_the_task(system: RunningSystem) -> None:
    task_id = unique_task_id("refused")
    request = demo_task(system, task_id, outcome="no-such-outcome")

    await publish_task(system.config, request)

    (report,) = await wait_until(lambda: system.reports(task_id), finished)
    assert report.task.status.value == "failed"
    assert [(a.outcome, a.status_code) for a in report.attempts] == [("rejected", 400)]
    (comment,) = terminal_comments(report)
    assert "HTTP 400" in comment.text


async def test_callback_for_unknown_or_forged_ids_is_rejected(system: RunningSystem) -> None:
    assert system.config.gateway_url
    forged = callback_url(system.config.gateway_url, "no-such-task", "e2e.forged-token")
    body = {"correlationId": "no-such-task", "status": "success"}
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(forged, json=body)

    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")


async def test_duplicate_callbacks_give_one_outcome_and_one_comment(system: RunningSystem) -> None:
    task_id, correlation_id, url = await waiting_for_callbacks(system, "duplicate-callback")
    success = {
        "correlationId": correlation_id,
        "status": "success",
        "resultUrl": "https://cdn.example.com/once.mp4",
        "metadata": {"title": "Once"},
    }
    late_error = {"correlationId": correlation_id, "status": "error", "error": "late"}
    async with httpx.AsyncClient(trust_env=False) as http:
        answers = list(
            await asyncio.gather(http.post(url, json=success), http.post(url, json=success))
        )
        # Sent once both successes are durable, so the dispatcher sees it after them.
        answers.append(await http.post(url, json=late_error))
    assert [answer.status_code for answer in answers] == [202, 202, 202]

    (report,) = await wait_until(
        lambda: system.reports(task_id), lambda r: finished(r) and len(r[0].history) == 3
    )
    assert report.task.status.value == "completed"
    assert len(terminal_comments(report)) == 1
    assert [entry.outcome for entry in report.history].count("applied") == 1
    await asyncio.sleep(1.0)  # anything still in flight would show up now
    (report,) = await system.reports(task_id)
    assert len(terminal_comments(report)) == 1
    assert len(report.notifications) == 2


async def test_duplicate_task_events_dispatch_once(system: RunningSystem) -> None:
    task_id = unique_task_id("duplicate-task")
    request = demo_task(system, task_id, outcome="success", delaySeconds=0.5)
    same_request_again = request.model_copy()
    await publish_task(system.config, request)
    await publish_task(system.config, same_request_again)

    await wait_until(lambda: system.reports(task_id), finished)
    await asyncio.sleep(1.0)  # a second dispatch, if any, would have happened by now

    reports = await system.reports(task_id)
    assert len(reports) == 1
    assert len(reports[0].attempts) == 1
    assert len(terminal_comments(reports[0])) == 1


async def test_a_late_success_reaches_the_user_marked_late_and_the_task_stays_expired(
    system: RunningSystem,
) -> None:
    task_id = unique_task_id("late")
    await publish_task(system.config, demo_task(system, task_id, outcome="never", timeoutSeconds=1))
    (report,) = await wait_until(lambda: system.reports(task_id), finished)
    assert report.task.status.value == "expired"
    assert system.config.gateway_url
    url = system.tokens.callback_url(system.config.gateway_url, report.task.correlation_id)
    late = {
        "correlationId": report.task.correlation_id,
        "status": "success",
        "resultUrl": "https://cdn.example.com/late.mp4",
        "metadata": {"title": "Finally"},
    }
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(url, json=late)
    assert answer.status_code == 202

    (report,) = await wait_until(
        lambda: system.reports(task_id),
        lambda r: any(comment.kind == "late_result" for comment in r[0].comments),
    )
    assert report.task.status.value == "expired"
    assert [comment.kind for comment in terminal_comments(report)] == ["expired", "late_result"]
    assert "arrived late" in report.comments[-1].text
    assert "late result" in (report.history[-1].detail or "")


async def test_a_service_echoing_webhook_auth_gets_it_into_no_event_record_or_comment(
    system: RunningSystem,
) -> None:
    task_id = unique_task_id("echo")
    await publish_task(
        system.config,
        demo_task(system, task_id, outcome="success", delaySeconds=0.2, echoAuth=True),
    )

    (report,) = await wait_until(
        lambda: system.reports(task_id), lambda r: finished(r) and len(r[0].notifications) == 2
    )

    assert report.task.status.value == "completed"
    assert report.task.result_url.endswith(".mp4?auth=**********")
    (callback,) = await read_topic(
        system,
        system.topics.callback_received,
        TypeAdapter(CallbackReceived),
        {report.task.correlation_id},
        done=lambda found: len(found) >= 1,
    )
    # Masked by the gateway, before the callback was written to Kafka.
    assert callback.metadata["request"] == {"authorization": "Bearer **********"}
    assert callback.result_url == report.task.result_url
    assert "e2e-secret-value" not in repr(report)
    # Upstream's task event carries it by contract; no event written after it does.
    written = await every_record(
        system, [t for t in system.topics.all() if t != system.topics.task_requested]
    )
    assert report.task.correlation_id.encode() in b"".join(written)
    assert not [record for record in written if b"e2e-secret-value" in record]


async def every_record(system: RunningSystem, topics: list[str]) -> list[bytes]:
    """Return the value of every record now in `topics`, from the start."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=system.config.kafka_bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's metadata, every topic's partitions
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in consumer.partitions_for_topic(topic) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(partitions)
        values: list[bytes] = []
        behind = {tp for tp, end in ends.items() if end > 0}
        while behind:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            values += [record.value or b"" for records in batches.values() for record in records]
            behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
        return values
    finally:
        await consumer.stop()


async def test_progress_keeps_one_comment_that_ends_with_the_task(system: RunningSystem) -> None:
    task_id, correlation_id, url = await waiting_for_callbacks(system, "progress")
    async with httpx.AsyncClient(trust_env=False) as http:
        for percent in (10, 90):
            progress = {"correlationId": correlation_id, "status": "progress", "progress": percent}
            assert (await http.post(url, json=progress)).status_code == 202

            def shows(reports: list[TaskReport], percent: int = percent) -> bool:
                return any(f"{percent}%" in c.text for c in reports[0].comments)

            await wait_until(lambda: system.reports(task_id), shows)
        success = {"correlationId": correlation_id, "status": "success", "metadata": {}}
        assert (await http.post(url, json=success)).status_code == 202

    (report,) = await wait_until(
        lambda: system.reports(task_id),
        lambda r: finished(r) and "No longer" in r[0].comments[0].text,
    )
    assert report.task.status.value == "completed"
    assert [(comment.kind, comment.text) for comment in report.comments] == [
        (
            "progress",
            "**No longer in progress**: the task completed. The outcome is in the comment below.",
        ),
        ("result", report.comments[1].text),
    ]
