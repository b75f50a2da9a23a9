"""Tasks bound to a callback endpoint: the gateway takes only callbacks signed with its secret."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks import Webhook
from webhook_tasks_cli.operations import publish_task
from webhook_tasks_contracts import TaskMetadata, TaskRequested

from .conftest import (
    SIGNED_ENDPOINT,
    SIGNED_ENDPOINT_SECRET,
    RunningSystem,
    finished,
    terminal_comments,
    unique_task_id,
    wait_until,
)

pytestmark = pytest.mark.e2e


async def test_only_a_signed_callback_completes_an_endpoint_bound_task(
    system: RunningSystem,
) -> None:
    task_id = unique_task_id("signed")
    await publish_task(
        system.config,
        TaskRequested(
            task_id=task_id,
            user_id="user-1",
            project_id="project-1",
            prompt="sign your answers",
            task_metadata=TaskMetadata(
                is_webhook_task=True,
                webhook_url=f"{system.demo_url}/generate-video",
                webhook_params={"outcome": "never"},
                callback_endpoint=SIGNED_ENDPOINT,
            ),
        ),
    )
    (report,) = await wait_until(
        lambda: system.reports(task_id),
        lambda r: len(r) == 1 and r[0].task.status.value == "initiated",
    )
    correlation_id = report.task.correlation_id
    assert system.config.gateway_url
    url = system.tokens.callback_url(
        system.config.gateway_url, correlation_id, endpoint=SIGNED_ENDPOINT
    )
    body = json.dumps(
        {"correlationId": correlation_id, "status": "success", "resultUrl": "https://cdn/s.mp4"}
    )
    message_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    signature = Webhook(SIGNED_ENDPOINT_SECRET).sign(message_id, now, body)
    signed_headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }

    async with httpx.AsyncClient(trust_env=False) as http:
        unsigned = await http.post(url, content=body, headers={"content-type": "application/json"})
        forged = await http.post(
            url, content=body, headers={**signed_headers, "webhook-signature": "v1,AAAA"}
        )
        signed = await http.post(url, content=body, headers=signed_headers)

    assert (unsigned.status_code, forged.status_code, signed.status_code) == (401, 401, 202)
    (report,) = await wait_until(lambda: system.reports(task_id), finished)
    assert report.task.status.value == "completed"
    assert len(terminal_comments(report)) == 1
