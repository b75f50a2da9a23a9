"""Redeliveries are safe, and progress heartbeats are accepted and checked like any callback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from webhook_tasks_contracts import CallbackReceived, CallbackTokens


def events(publisher: Any) -> list[CallbackReceived]:
    return [CallbackReceived.model_validate_json(m.value) for m in publisher.messages]


async def post(
    client: httpx.AsyncClient,
    tokens: CallbackTokens,
    cid: str,
    body: dict[str, Any],
    webhook_id: str | None = None,
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if webhook_id is not None:
        headers["webhook-id"] = webhook_id
    return await client.post(
        tokens.callback_url("http://gateway", cid), content=json.dumps(body), headers=headers
    )


class TestRedelivery:
    async def test_the_same_delivery_twice_is_one_event_id(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        body = {"correlationId": cid, "status": "success", "resultUrl": "https://r.example/1"}

        first = await post(client, tokens, cid, body, webhook_id="msg_1")
        again = await post(client, tokens, cid, body, webhook_id="msg_1")

        assert (first.status_code, again.status_code) == (202, 202)
        one, two = events(publisher)
        # Consumers skip an event id seen before, so the redelivery changes nothing.
        assert one.event_id == two.event_id
        assert one.delivery_id == two.delivery_id == "msg_1"
        assert one.model_dump(exclude={"occurred_at"}) == two.model_dump(exclude={"occurred_at"})

    async def test_another_delivery_id_is_another_event(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        body = {"correlationId": cid, "status": "progress", "progress": 10}

        await post(client, tokens, cid, body, webhook_id="msg_1")
        await post(client, tokens, cid, body, webhook_id="msg_2")

        one, two = events(publisher)
        assert one.event_id != two.event_id

    async def test_a_reused_delivery_id_with_other_content_is_not_taken_for_a_retry(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        await post(client, tokens, cid, {"correlationId": cid, "status": "progress"}, "msg_1")
        await post(client, tokens, cid, {"correlationId": cid, "status": "success"}, "msg_1")

        one, two = events(publisher)
        assert one.event_id != two.event_id
        assert (one.status, two.status) == ("progress", "success")

    async def test_the_same_delivery_id_for_another_task_is_another_event(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        other = f"{cid}-2"

        await post(client, tokens, cid, {"correlationId": cid, "status": "success"}, "msg_1")
        await post(client, tokens, other, {"correlationId": other, "status": "success"}, "msg_1")

        one, two = events(publisher)
        assert one.event_id != two.event_id

    async def test_without_a_delivery_id_each_post_is_a_new_event(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        body = {"correlationId": cid, "status": "success"}

        await post(client, tokens, cid, body)
        await post(client, tokens, cid, body)

        one, two = events(publisher)
        assert one.event_id != two.event_id
        assert one.delivery_id is two.delivery_id is None


class TestProgress:
    @pytest.mark.parametrize(
        ("extra", "progress", "message"),
        [
            ({"progress": 0}, 0, None),
            ({"progress": 100, "message": "done soon"}, 100, "done soon"),
            ({"progress": 33.3, "message": ""}, 33.3, ""),
            ({}, None, None),
            ({"message": "still rendering"}, None, "still rendering"),
            ({"progress": None, "message": None}, None, None),
            ({"progress": 5, "unknown": "ignored"}, 5, None),
        ],
    )
    async def test_a_heartbeat_is_published_with_its_progress_and_message(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        extra: dict[str, Any],
        progress: float | None,
        message: str | None,
    ) -> None:
        response = await post(
            client, tokens, cid, {"correlationId": cid, "status": "progress", **extra}
        )

        assert response.status_code == 202, response.text
        [event] = events(publisher)
        assert (event.status, event.progress, event.message) == ("progress", progress, message)
        assert (event.result_url, event.error) == (None, None)

    async def test_a_long_heartbeat_message_is_cut_and_the_heartbeat_kept(
        self, client: httpx.AsyncClient, publisher: Any, tokens: CallbackTokens, cid: str
    ) -> None:
        # Refused, the heartbeat would not extend the deadline and the task could expire.
        response = await post(
            client,
            tokens,
            cid,
            {"correlationId": cid, "status": "progress", "progress": 40, "message": "step " * 1000},
        )

        assert response.status_code == 202, response.text
        [event] = events(publisher)
        assert (event.progress, event.message) == (40, "step " * 198 + "step [...]")

    @pytest.mark.parametrize(
        ("extra", "field"),
        [
            ({"progress": -0.1}, "progress"),
            ({"progress": 100.5}, "progress"),
            ({"progress": "half"}, "progress"),
            ({"message": 7}, "message"),
        ],
    )
    async def test_an_invalid_heartbeat_is_400_naming_the_field(
        self,
        client: httpx.AsyncClient,
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        extra: dict[str, Any],
        field: str,
    ) -> None:
        response = await post(
            client, tokens, cid, {"correlationId": cid, "status": "progress", **extra}
        )

        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert [error["field"] for error in response.json()["errors"]] == [field]
        assert publisher.messages == []


class TestDurability:
    async def test_exactly_the_callbacks_answered_202_were_published(
        self,
        make_client: Any,
        tokens: CallbackTokens,
        cid: str,
    ) -> None:
        class Intermittent:
            """Kafka that takes every other publish and refuses the rest."""

            def __init__(self) -> None:
                self.calls = 0
                self.messages: list[Any] = []

            async def publish(self, message: Any) -> None:
                self.calls += 1
                if self.calls % 2 == 0:
                    raise ConnectionError("broker away")
                self.messages.append(message)

        publisher = Intermittent()
        answers: dict[str, int] = {}
        async with make_client(publisher) as http:
            for index in range(20):
                body = {"correlationId": cid, "status": "progress", "progress": index}
                response = await post(http, tokens, cid, body, webhook_id=f"msg_{index}")
                answers[f"msg_{index}"] = response.status_code

        published = {event.delivery_id for event in events(publisher)}
        assert set(answers.values()) == {202, 503}
        assert published == {key for key, status in answers.items() if status == 202}
        assert not published & {key for key, status in answers.items() if status == 503}
