"""A sync task's answer read as its result: what is taken, and why what is not."""

from __future__ import annotations

import json

import pytest
from webhook_tasks_contracts import ErrorCallback, SuccessCallback
from webhook_tasks_dispatcher.client import DeliveryResult
from webhook_tasks_dispatcher.service import parse_sync_result


def answer(body: object) -> DeliveryResult:
    return DeliveryResult("accepted", 5.0, status_code=200, body=json.dumps(body).encode())


def test_the_product_summary_s_result_needs_no_correlation_id() -> None:
    result = parse_sync_result(
        "cid-1", answer({"status": "success", "resultUrl": "https://cdn.example.com/r.mp4"})
    )

    assert isinstance(result, SuccessCallback)
    assert (result.correlation_id, result.result_url) == ("cid-1", "https://cdn.example.com/r.mp4")


def test_an_error_answer_with_a_long_or_null_error_is_still_the_service_s_error() -> None:
    long = parse_sync_result("cid-1", answer({"status": "error", "error": "quota " * 2000}))
    null = parse_sync_result("cid-1", answer({"status": "error", "error": None}))

    assert isinstance(long, ErrorCallback)
    assert long.error.startswith("quota quota")
    assert long.error.endswith("[...]")
    assert isinstance(null, ErrorCallback)
    assert null.error == "The external service reported an error."


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"status": "success", "resultUrl": "ftp://files.example/r.mp4"},
            "the external service's result was invalid: resultUrl: must be an absolute http or "
            "https URL",
        ),
        (
            {"status": "success", "metadata": ["not", "an", "object"]},
            "the external service's result was invalid: metadata: Input should be a valid "
            "dictionary",
        ),
        (
            {"status": "done"},
            "the external service's answer had no result (expected status success or error)",
        ),
        ({"status": "progress"}, "the external service answered with progress instead of a result"),
    ],
)
def test_an_answer_that_is_no_result_says_which_field_and_why(body: object, reason: str) -> None:
    assert parse_sync_result("cid-1", answer(body)) == reason


def test_the_reason_never_quotes_what_the_service_sent() -> None:
    reason = parse_sync_result(
        "cid-1", answer({"status": "success", "resultUrl": "https://x/?key=sk_live_abcdef ghi"})
    )

    assert isinstance(reason, str)
    assert "sk_live_abcdef" not in reason
