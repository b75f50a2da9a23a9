"""Event models and the product summary's payloads: what they accept, refuse and never leak."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from webhook_tasks_contracts import (
    REVEAL_SECRETS,
    ErrorCallback,
    ProgressCallback,
    SuccessCallback,
    TaskCompleted,
    TaskMetadata,
    TaskRef,
    TaskRequested,
    Topics,
    WebhookAck,
    build_webhook_request,
    callback_body_adapter,
    derived_event_id,
    lifecycle_event_adapter,
)
from webhook_tasks_contracts._validators import (
    _PLAIN_HTTP_URL,
    MAX_ERROR_LENGTH,
    _checked_http_url,
)

PRODUCT_SUMMARY_TASK: dict[str, Any] = {
    "taskId": "task-1",
    "userId": "user-1",
    "projectId": "project-1",
    "prompt": "User's prompt",
    "taskMetadata": {
        "isWebhookTask": True,
        "webhookUrl": "https://your-external-service.com/api/generate-video",
        "webhookAuth": "Bearer your-api-key",
        "webhookParams": {"quality": "high", "format": "mp4"},
    },
}


def test_the_product_summary_task_configuration_is_accepted_in_camel_case() -> None:
    task = TaskRequested.model_validate(PRODUCT_SUMMARY_TASK)

    assert task.task_metadata.webhook_params == {"quality": "high", "format": "mp4"}
    assert task.task_metadata.timeout_seconds == 300
    assert task.task_metadata.mode == "callback"
    assert task.schema_version == 1


def test_webhook_auth_is_masked_unless_the_publisher_asks_to_reveal_it() -> None:
    task = TaskRequested.model_validate(PRODUCT_SUMMARY_TASK)

    assert "your-api-key" not in task.model_dump_json()
    assert "your-api-key" not in repr(task)
    revealed = json.loads(task.model_dump_json(context={REVEAL_SECRETS: True}))
    assert revealed["task_metadata"]["webhook_auth"] == "Bearer your-api-key"
    assert TaskRequested.model_validate(revealed).task_metadata.webhook_auth is not None


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"isWebhookTask": True}, "webhookUrl is required"),
        ({"isWebhookTask": True, "webhookUrl": "ftp://x/"}, "http or https"),
        ({"isWebhookTask": True, "webhookUrl": "/relative"}, "http or https"),
        (
            {
                "isWebhookTask": True,
                "webhookUrl": "https://x/",
                "webhookParams": {"callbackUrl": "x"},
            },
            "reserved fields: callbackUrl",
        ),
        ({"isWebhookTask": True, "webhookUrl": "https://x/", "timeoutSeconds": 0}, "greater than"),
        ({"isWebhookTask": True, "webhookUrl": "https://x/a b"}, "spaces or control"),
        ({"isWebhookTask": True, "webhookUrl": "https://x/\x7f"}, "spaces or control"),
        ({"isWebhookTask": True, "webhookUrl": "https://u:p@x/"}, "credentials"),
        ({"isWebhookTask": True, "webhookUrl": "https://u@x/"}, "credentials"),
    ],
)
def test_invalid_task_metadata_is_refused_with_the_reason(
    metadata: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        TaskMetadata.model_validate(metadata)


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x1f", " ", "\x7f"])
def test_a_url_with_a_space_or_control_character_inside_is_refused(char: str) -> None:
    # Around the URL, whitespace is trimmed; inside it, nothing below "!" and no DEL passes.
    for url in (f"https://x.example/a{char}b", f"https://x.example/?q={char}&r=1"):
        with pytest.raises(ValidationError, match="spaces or control"):
            TaskMetadata.model_validate({"isWebhookTask": True, "webhookUrl": url})


def test_a_url_with_printable_and_non_ascii_characters_is_kept_as_given() -> None:
    url = "https://x.example/caf\u00e9/~!$&'()*+,;=:@%20?a=b#frag"

    assert TaskMetadata.model_validate({"webhookUrl": url}).webhook_url == url


@pytest.mark.parametrize("auth", ["Bearer t\u00f6k\u00e9n", "Bearer a\r\nX-Injected: 1"])
def test_webhook_auth_must_be_a_header_value_and_is_never_quoted(auth: str) -> None:
    with pytest.raises(ValidationError, match="printable ASCII") as raised:
        TaskMetadata.model_validate({"webhookAuth": auth})

    assert auth not in str(raised.value)


def test_an_empty_webhook_auth_sends_no_header() -> None:
    assert TaskMetadata.model_validate({"webhookAuth": ""}).webhook_auth is None
    assert TaskMetadata.model_validate({"webhookAuth": "Bearer x"}).webhook_auth is not None


def test_a_task_without_the_webhook_flag_needs_no_url() -> None:
    assert not TaskMetadata.model_validate({}).is_webhook_task


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {"isWebhookTask": False, "webhookUrl": "notaurl"},
        {"webhookUrl": "ftp://x/", "timeoutSeconds": 0},
        {"is_webhook_task": "false", "mode": "later"},
    ],
)
def test_another_kind_of_task_is_taken_whatever_its_metadata_holds(metadata: object) -> None:
    # Not a webhook task: the dispatcher ignores it, rather than dead-letter it for a field
    # it never uses.
    task = TaskRequested.model_validate({**PRODUCT_SUMMARY_TASK, "taskMetadata": metadata})

    assert not task.task_metadata.is_webhook_task


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"isWebhookTask": "true", "webhookUrl": "notaurl"}, "http or https"),
        ({"isWebhookTask": "perhaps", "webhookUrl": "https://x/"}, "valid boolean"),
        ("a string", "valid dictionary"),
    ],
)
def test_a_webhook_task_with_unusable_metadata_is_still_refused(
    metadata: object, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        TaskRequested.model_validate({**PRODUCT_SUMMARY_TASK, "taskMetadata": metadata})


def test_null_webhook_params_are_none_given() -> None:
    metadata = TaskMetadata.model_validate(
        {"isWebhookTask": True, "webhookUrl": "https://x/", "webhookParams": None}
    )

    assert metadata.webhook_params == {}


def test_idempotency_key_prefers_the_request_id() -> None:
    task = TaskRequested.model_validate(PRODUCT_SUMMARY_TASK)
    with_request_id = task.model_copy(update={"request_id": "run-7"})

    assert task.idempotency_key == f"task-1/{task.event_id}"
    assert with_request_id.idempotency_key == "task-1/run-7"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("orders/42", "retry-1"), ("orders", "42/retry-1")),
        (("a/b", "c"), ("a%2Fb", "c")),
        (("a%b", "c"), ("a%25b", "c")),
    ],
)
def test_different_requests_never_share_an_idempotency_key(
    one: tuple[str, str], other: tuple[str, str]
) -> None:
    task = TaskRequested.model_validate(PRODUCT_SUMMARY_TASK)
    keys = {
        task.model_copy(update={"task_id": task_id, "request_id": request_id}).idempotency_key
        for task_id, request_id in (one, other)
    }

    assert len(keys) == 2


def test_a_task_id_ends_at_the_first_slash_of_its_key() -> None:
    task = TaskRequested.model_validate(PRODUCT_SUMMARY_TASK)
    task = task.model_copy(update={"task_id": "orders/42%", "request_id": "retry/1"})

    assert task.idempotency_key == "orders%2F42%25/retry/1"


def test_the_webhook_request_has_the_product_summary_fields_and_params() -> None:
    body = build_webhook_request(
        correlation_id="cid",
        callback_url="https://gw/cb",
        prompt="p",
        task_id="t",
        user_id="u",
        project_id="pr",
        params={"quality": "high", "correlationId": "hijack"},
    )

    assert body == {
        "correlationId": "cid",
        "callbackUrl": "https://gw/cb",
        "prompt": "p",
        "taskId": "t",
        "userId": "u",
        "projectId": "pr",
        "quality": "high",
    }


def test_the_product_summary_callbacks_parse() -> None:
    success = callback_body_adapter.validate_json(
        json.dumps(
            {
                "correlationId": "same-uuid",
                "status": "success",
                "resultUrl": "https://cdn.example.com/result.mp4",
                "metadata": {"title": "Generated Video", "duration": "2m 30s"},
            }
        )
    )
    error = callback_body_adapter.validate_json(
        '{"correlationId": "same-uuid", "status": "error", "error": "Error description"}'
    )

    assert isinstance(success, SuccessCallback)
    assert success.result_url == "https://cdn.example.com/result.mp4"
    assert isinstance(error, ErrorCallback)
    assert error.error == "Error description"


def test_an_error_callback_is_taken_however_long_or_empty_its_error() -> None:
    trace = "Traceback (most recent call last):\n" + "  File x, line 1\n" * 400

    long = callback_body_adapter.validate_json(
        json.dumps({"correlationId": "c", "status": "error", "error": trace})
    )
    for absent in ('"error": null', '"error": "  "', '"other": 1'):
        empty = callback_body_adapter.validate_json(
            f'{{"correlationId": "c", "status": "error", {absent}}}'
        )
        assert isinstance(empty, ErrorCallback)
        assert empty.error == "The external service reported an error."

    assert isinstance(long, ErrorCallback)
    assert MAX_ERROR_LENGTH - 30 < len(long.error) <= MAX_ERROR_LENGTH
    assert long.error.endswith(" [...]")
    assert trace.startswith(long.error.removesuffix(" [...]"))


def test_a_word_the_cut_falls_in_goes_whole() -> None:
    # An echoed credential cut in two would escape the masking that looks for it whole.
    secret = "sk_live_" + "q" * 40
    for at in range(MAX_ERROR_LENGTH - 50, MAX_ERROR_LENGTH):
        text = "e" * (at - 1) + " " + secret + " more words"
        error = callback_body_adapter.validate_json(
            json.dumps({"correlationId": "c", "status": "error", "error": text})
        )
        assert isinstance(error, ErrorCallback)
        assert "sk_live" not in error.error or secret in error.error, at


def test_a_long_progress_message_is_cut_not_refused() -> None:
    progress = callback_body_adapter.validate_json(
        json.dumps({"correlationId": "c", "status": "progress", "message": "step " * 1000})
    )
    one_word = callback_body_adapter.validate_json(
        json.dumps({"correlationId": "c", "status": "progress", "message": "m" * 5000})
    )

    assert isinstance(progress, ProgressCallback)
    assert progress.message == "step " * 198 + "step [...]"
    assert isinstance(one_word, ProgressCallback)
    assert one_word.message == "[...]"


def test_a_pre_signed_result_url_of_a_few_kilobytes_is_taken_as_given() -> None:
    url = "https://bucket.s3.amazonaws.com/out.mp4?X-Amz-Security-Token=" + "A" * 3000
    success = callback_body_adapter.validate_json(
        json.dumps({"correlationId": "c", "status": "success", "resultUrl": url})
    )

    assert isinstance(success, SuccessCallback)
    assert success.result_url == url


def test_an_empty_result_url_or_null_metadata_is_none_given() -> None:
    success = callback_body_adapter.validate_json(
        '{"correlationId": "c", "status": "success", "resultUrl": "", "metadata": null}'
    )

    assert isinstance(success, SuccessCallback)
    assert (success.result_url, success.metadata) == (None, {})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"status": "success"}', "correlationId"),
        ('{"correlationId": "c", "status": "done"}', "status"),
        ('{"correlationId": "c", "status": "success", "resultUrl": "javascript:x"}', "resultUrl"),
        ('{"correlationId": "c", "status": "progress", "progress": 101}', "progress"),
        ('{"correlationId": "c", "status": "progress", "progress": true}', "progress"),
        ('{"correlationId": "c", "status": "progress", "progress": "50"}', "progress"),
        ('{"correlationId": "c", "status": "error", "error": "bad \\u0000 byte"}', "error"),
        ('{"correlationId": "c", "status": "success", "metadata": {"k": ["\\u0000"]}}', "metadata"),
        ("not json", "json"),
    ],
)
def test_bad_callbacks_name_the_field(body: str, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        callback_body_adapter.validate_json(body)

    assert field in str(raised.value)


def test_an_ack_without_known_fields_is_still_an_ack() -> None:
    ack = WebhookAck.model_validate_json('{"status": "accepted", "estimatedCompletion": "20s"}')

    assert ack.estimated_completion == "20s"
    assert WebhookAck.model_validate_json("{}").status is None


@pytest.mark.parametrize(
    ("estimated_completion", "kept"),
    [
        ('"2026-01-01T12:00:00Z"', "2026-01-01T12:00:00Z"),
        ("30", "30"),
        ("30.5", "30.5"),
        ("null", None),
    ],
)
def test_an_ack_keeps_its_estimated_completion_as_text(
    estimated_completion: str, kept: str | None
) -> None:
    ack = WebhookAck.model_validate_json(
        f'{{"status": "accepted", "estimatedCompletion": {estimated_completion}}}'
    )

    assert ack == WebhookAck(status="accepted", estimated_completion=kept)


@pytest.mark.parametrize(
    "odd_value",
    ["true", "[30]", '{"seconds": 30}', '"x\\u0000y"', '"' + "x" * 101 + '"', "9" * 101],
)
def test_one_odd_ack_field_drops_only_itself(odd_value: str) -> None:
    odd_eta = WebhookAck.model_validate_json(
        f'{{"status": "accepted", "estimatedCompletion": {odd_value}}}'
    )
    odd_status = WebhookAck.model_validate_json(
        f'{{"status": {odd_value}, "estimatedCompletion": "20s"}}'
    )

    assert odd_eta == WebhookAck(status="accepted", estimated_completion=None)
    assert odd_status == WebhookAck(status=None, estimated_completion="20s")


def test_an_ack_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValidationError):
        WebhookAck.model_validate_json('["accepted"]')


def test_lifecycle_events_round_trip_through_the_union() -> None:
    event = TaskCompleted(
        correlation_id="cid",
        task=TaskRef(task_id="t", user_id="u", project_id="p", followers=("f",)),
        result_url="https://x/r",
        metadata={"title": "T"},
    )

    parsed = lifecycle_event_adapter.validate_json(event.model_dump_json())

    assert parsed == event


def test_an_unknown_schema_version_is_refused() -> None:
    event = TaskCompleted(
        correlation_id="cid", task=TaskRef(task_id="t", user_id="u", project_id="p")
    )
    data = json.loads(event.model_dump_json())
    data["schema_version"] = 2

    with pytest.raises(ValidationError, match="schema_version"):
        lifecycle_event_adapter.validate_python(data)


def test_derived_event_ids_are_stable_and_distinct() -> None:
    assert derived_event_id("cid", "terminal") == derived_event_id("cid", "terminal")
    assert derived_event_id("cid", "terminal") != derived_event_id("cid", "dispatched")


def test_events_record_aware_times() -> None:
    event = TaskCompleted(
        correlation_id="c", task=TaskRef(task_id="t", user_id="u", project_id="p")
    )

    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at <= datetime.now(UTC)


def test_topics_are_prefixed_and_include_dead_letters() -> None:
    topics = Topics("acme")

    assert topics.task_requested == "acme.task-requested"
    assert topics.dead_letter(topics.task_lifecycle) == "acme.task-lifecycle.dead-letter"
    assert len(topics.all()) == 10


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"taskId": "t\x00"}, "taskId"),
        ({"followers": ["u\x00"]}, "followers"),
        ({"webhookParams": {"\x00": 1}}, "webhookParams"),
        ({"webhookParams": {"a": [1, None, {"b": ("x", "y\x00")}]}}, "webhookParams"),
        ({"webhookAuth": "Bearer \x00"}, "webhookAuth"),
    ],
)
def test_a_task_event_with_a_nul_character_is_refused_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    metadata: dict[str, object] = dict(PRODUCT_SUMMARY_TASK["taskMetadata"])
    event = dict(PRODUCT_SUMMARY_TASK, taskMetadata=metadata)
    for key, value in change.items():
        (metadata if key.startswith("webhook") else event)[key] = value

    with pytest.raises(ValidationError) as raised:
        TaskRequested.model_validate(event)

    assert field in str(raised.value)
    assert "NUL" in str(raised.value)
    assert "Bearer" not in str(raised.value)


_URL_PIECES = st.sampled_from(
    ["http://", "https://", "HTTP://", "ftp://", "//", "a", "Z", "0", ".", "-", ":", "80", "/",
     "?", "#", "@", "u:p@", "[", "]", "[::1]", "%20", "\\", " ", "\t", "\x00", "\x7f", "\u00e9",
     "\u3000", "=", "&", "x.example"]
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(_URL_PIECES, max_size=12).map("".join))
def test_the_fast_url_check_accepts_only_urls_the_full_rules_accept(url: str) -> None:
    # The fast check decides alone only for URLs it matches; they must all pass the full rules.
    if _PLAIN_HTTP_URL.fullmatch(url):
        assert _checked_http_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example.com/videos/abc.mp4",
        "http://10.0.0.1:8080/cb?x=1#f",
        "https://x.example",
        "https://x.example/caf\u00e9/~!$&'()*+,;=:@%20?a=b#frag",
    ],
)
def test_common_urls_take_the_fast_check(url: str) -> None:
    assert _PLAIN_HTTP_URL.fullmatch(url)


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_a_time_no_consumer_can_store_is_refused_so_its_event_is_dead_lettered(
    moment: str,
) -> None:
    # Valid with its zone, yet outside years 1-9999 in UTC: taken, it failed every write.
    with pytest.raises(ValidationError, match="years 1 to 9999 in UTC"):
        TaskRequested.model_validate({**PRODUCT_SUMMARY_TASK, "occurredAt": moment})
    with pytest.raises(ValidationError, match="years 1 to 9999 in UTC"):
        lifecycle_event_adapter.validate_python(
            {
                "type": "task.expired",
                "correlation_id": "c",
                "task": {"task_id": "t", "user_id": "u", "project_id": "p"},
                "deadline_at": moment,
                "timeout_seconds": 60,
            }
        )
