"""Callback parsing and problem rendering, without HTTP."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from webhook_tasks_contracts import ErrorCallback, ProgressCallback, SuccessCallback
from webhook_tasks_gateway.callbacks import (
    callback_event,
    delivery_id,
    header_value,
    parse_callback,
    read_body,
    require_json,
)
from webhook_tasks_gateway.problems import (
    BodyTooLargeError,
    CallbackNotStoredError,
    FieldError,
    InvalidBodyError,
    InvalidHeaderError,
    UnsupportedMediaTypeError,
)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json;charset=UTF-8", "application/vnd.x+json"],
)
def test_json_media_types_pass(content_type: str) -> None:
    require_json(content_type)


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "text/json", "application/jsonx"],
)
def test_other_media_types_are_refused(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        require_json(content_type)


def hold_nothing(_size: int) -> None:
    return None


def fields_of(body: object, correlation_id: str = "c-1") -> list[str]:
    with pytest.raises(InvalidBodyError) as refused:
        parse_callback(json.dumps(body).encode(), correlation_id)
    return [".".join(map(str, error.location)) for error in refused.value.errors]


def test_field_locations_leave_out_the_status_tag() -> None:
    assert fields_of({"correlationId": "c-1", "status": "error", "error": 5}) == ["error"]
    assert fields_of({"correlationId": "c-1", "status": "progress", "progress": 101}) == [
        "progress"
    ]
    assert fields_of({"status": "success", "metadata": {"a": 1}}) == ["correlationId"]


def test_missing_or_unknown_status_is_located_at_status() -> None:
    assert fields_of({"correlationId": "c-1"}) == ["status"]
    assert fields_of({"correlationId": "c-1", "status": "done"}) == ["status"]


def test_a_body_that_is_not_an_object_is_located_at_the_root() -> None:
    assert fields_of([1, 2]) == [""]


def test_correlation_id_must_match_the_url() -> None:
    assert fields_of({"correlationId": "c-2", "status": "success"}, "c-1") == ["correlationId"]


def test_correlation_id_is_compared_after_trimming() -> None:
    callback = parse_callback(b'{"correlationId": " c-1 ", "status": "success"}', "c-1")

    assert callback.correlation_id == "c-1"


def test_event_copies_each_kind_of_callback() -> None:
    success = callback_event(
        SuccessCallback(
            correlation_id="c-1", status="success", result_url="https://r.example/x", metadata={}
        ),
        delivery="d-1",
    )
    error = callback_event(
        ErrorCallback(correlation_id="c-1", status="error", error="no"), delivery=None
    )
    progress = callback_event(
        ProgressCallback(correlation_id="c-1", status="progress", progress=5, message="m"),
        delivery=None,
    )

    assert (success.result_url, success.delivery_id) == ("https://r.example/x", "d-1")
    assert (error.status, error.error, error.result_url) == ("error", "no", None)
    assert (progress.progress, progress.message, progress.error) == (5, "m", None)


@pytest.mark.parametrize("value", ["m" * 201, "msg\x00_1"])
def test_unusable_webhook_id_is_refused(value: str) -> None:
    with pytest.raises(InvalidHeaderError):
        delivery_id(value)


def test_field_error_pointer_escapes_json_pointer_characters() -> None:
    error = FieldError(("metadata", "a/b~c", 0), "bad")

    assert error.as_json() == {
        "pointer": "#/metadata/a~1b~0c/0",
        "field": "metadata.a/b~c.0",
        "detail": "bad",
    }


def test_invalid_body_problem_lists_errors_and_names_them_in_the_detail() -> None:
    problem = InvalidBodyError([FieldError(("correlationId",), "Field required")])

    response = problem.response()

    body = json.loads(bytes(response.body))
    assert response.status_code == 400
    assert response.media_type == "application/problem+json"
    assert body["detail"] == "The callback body is invalid: correlationId: Field required"
    assert body["errors"] == [
        {"pointer": "#/correlationId", "field": "correlationId", "detail": "Field required"}
    ]
    assert body["type"] == "urn:webhook-tasks:problem:invalid-callback-body"


def test_not_stored_problem_says_when_to_retry() -> None:
    response = CallbackNotStoredError(retry_after_seconds=12).response()

    assert response.status_code == 503
    assert response.headers["retry-after"] == "12"


def test_header_value_is_the_first_of_that_name() -> None:
    headers = [(b"host", b"g"), (b"webhook-id", b"m-1"), (b"webhook-id", b"m-2")]

    assert header_value(headers, b"webhook-id") == "m-1"
    assert header_value(headers, b"content-type") is None
    assert header_value([(b"x", b"caf\xe9")], b"x") == "caf\u00e9"  # latin-1, as Starlette reads


def receiving(*messages: dict[str, object]) -> Callable[[], Awaitable[dict[str, object]]]:
    pending = list(messages)

    async def receive() -> dict[str, object]:
        return pending.pop(0)

    return receive


async def test_body_arriving_in_chunks_is_joined() -> None:
    receive = receiving(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
    )

    assert await read_body(receive, None, 100, hold_nothing) == b'{"a":1}'


async def test_body_growing_past_the_limit_is_refused_without_reading_on() -> None:
    receive = receiving(
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
    )

    with pytest.raises(BodyTooLargeError):
        await read_body(receive, "10", 100, hold_nothing)


@pytest.mark.parametrize("declared", ["101", "0" * 10 + "101", "9" * 5000])
async def test_a_declared_length_over_the_limit_is_refused_before_reading(declared: str) -> None:
    receive = receiving()  # nothing to read: the header alone decides

    with pytest.raises(BodyTooLargeError) as refused:
        await read_body(receive, declared, 100, hold_nothing)

    assert "9" * 10 not in bytes(refused.value.response().body).decode()


@pytest.mark.parametrize("declared", ["7", "0" * 5000 + "7", "1" + "0" * 5000 + "x", "\u0661"])
async def test_a_declared_length_within_the_limit_or_unreadable_leaves_it_to_the_count(
    declared: str,
) -> None:
    receive = receiving({"type": "http.request", "body": b'{"a":1}', "more_body": False})

    assert await read_body(receive, declared, 100, hold_nothing) == b'{"a":1}'


async def test_client_gone_before_the_body_is_a_body_problem() -> None:
    receive = receiving(
        {"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}
    )

    with pytest.raises(InvalidBodyError, match="disconnected"):
        await read_body(receive, None, 100, hold_nothing)


@pytest.mark.parametrize(
    ("number", "where"),
    [
        (b"NaN", "metadata.score"),
        (b"Infinity", "metadata.score"),
        (b"-Infinity", "metadata.score"),
        (b"1e999", "metadata.score"),
        (b'[1, {"deep": -1e999}]', "metadata.score.1.deep"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_naming_the_field(number: bytes, where: str) -> None:
    body = b'{"correlationId": "c-1", "status": "success", "metadata": {"ok": 1.5, "score": %s}}'

    with pytest.raises(InvalidBodyError) as refused:
        parse_callback(body % number, "c-1")

    [error] = refused.value.errors
    assert ".".join(map(str, error.location)) == where
    assert "finite" in error.detail


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"1e999"])
def test_a_progress_that_is_not_finite_is_refused(number: bytes) -> None:
    body = b'{"correlationId": "c-1", "status": "progress", "progress": %s}' % number

    with pytest.raises(InvalidBodyError) as refused:
        parse_callback(body, "c-1")

    assert [error.location for error in refused.value.errors] == [("progress",)]


def test_finite_numbers_pass_untouched() -> None:
    body = b'{"correlationId": "c-1", "status": "success", "metadata": {"n": [1e308, -0.0, 7]}}'

    callback = parse_callback(body, "c-1")

    assert isinstance(callback, SuccessCallback)
    assert callback.metadata == {"n": [1e308, -0.0, 7]}
