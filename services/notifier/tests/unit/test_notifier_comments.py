from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from webhook_tasks_contracts import (
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskProgressed,
    TaskRef,
)
from webhook_tasks_notifier import comments
from webhook_tasks_notifier.comment_templates import TemplateError, load_templates
from webhook_tasks_notifier.comments import (
    escape_markdown,
    humanise_key,
    humanise_seconds,
    render_comment,
    render_progress_ended,
    safe_link_target,
)
from webhook_tasks_notifier.handlers import users_to_tell
from webhook_tasks_notifier.settings import NotifierSettings

TASK = TaskRef(task_id="task-1", user_id="user-1", project_id="project-1")
DEADLINE = datetime(2030, 1, 1, tzinfo=UTC)
TEMPLATES = load_templates()


def completed(result_url: str | None = None, **metadata: Any) -> TaskCompleted:
    return TaskCompleted(
        correlation_id="corr-1", task=TASK, result_url=result_url, metadata=metadata
    )


def failed(reason: str) -> TaskFailed:
    return TaskFailed(correlation_id="corr-1", task=TASK, cause="callback_error", reason=reason)


def test_result_shows_title_link_and_metadata_list() -> None:
    event = completed(
        "https://cdn.example.com/result.mp4",
        title="Generated Video",
        duration="2m 30s",
        fileSize="125 MB",
    )

    comment = render_comment(event, TEMPLATES)

    assert comment.kind == "result"
    assert comment.text == (
        "**Generated Video**\n"
        "\n"
        "[Open the result](https://cdn.example.com/result.mp4)\n"
        "\n"
        "- Duration: 2m 30s\n"
        "- File size: 125 MB"
    )


def test_result_without_title_url_or_metadata_is_just_the_default_title() -> None:
    assert render_comment(completed(), TEMPLATES).text == "**Result ready**"


def test_result_leaves_out_metadata_that_looks_secret() -> None:
    event = completed(apiKey="sk-live-123", accessToken="tok-456", author="Ada")

    text = render_comment(event, TEMPLATES).text

    assert "sk-live-123" not in text
    assert "tok-456" not in text
    assert "- Author: Ada" in text


def test_result_with_a_non_http_url_shows_it_as_text_not_a_link() -> None:
    text = render_comment(completed("javascript:alert(1)"), TEMPLATES).text

    assert "](" not in text
    assert "Result: javascript:alert(1)" in text


def test_result_link_drops_credentials_in_the_url() -> None:
    text = render_comment(completed("https://user:hunter2@cdn.example.com/r.mp4"), TEMPLATES).text

    assert "hunter2" not in text
    assert "[Open the result](https://cdn.example.com/r.mp4)" in text


def test_hostile_metadata_cannot_add_links_images_or_html() -> None:
    event = completed(
        title="[Click me](https://evil.example)",
        note="![pixel](https://evil.example/p.png) <script>alert(1)</script> <https://evil.example>",
    )

    text = render_comment(event, TEMPLATES).text

    assert "**\\[Click me\\](`https://evil.example`)**" in text
    assert "!\\[pixel\\]" in text
    assert "<" not in text
    assert "&lt;script&gt;" in text


def test_metadata_values_stay_on_their_line() -> None:
    text = render_comment(completed(note="first\n\n# Heading\r\n- item"), TEMPLATES).text

    assert text == "**Result ready**\n\n- Note: first # Heading - item"


def test_error_shows_the_cause_and_the_reason_quoted() -> None:
    comment = render_comment(failed("Model overloaded"), TEMPLATES)

    assert comment.kind == "error"
    assert comment.text == (
        "**Task failed**\n\nThe external service reported an error:\n\n> Model overloaded"
    )


@pytest.mark.parametrize(
    "reason",
    [
        "the external service answered HTTP 400",
        "the webhook URL was refused: the webhook host x.internal resolves to a private address",
    ],
)
def test_a_refused_request_is_not_said_to_be_refused_by_the_service_itself(reason: str) -> None:
    event = TaskFailed(correlation_id="corr-1", task=TASK, cause="dispatch_rejected", reason=reason)

    text = render_comment(event, TEMPLATES).text

    assert text == (
        f"**Task failed**\n\nThe request to the external service was refused:\n\n> {reason}"
    )


@pytest.mark.parametrize(
    "reason",
    [
        "the external service did not answer in time (no answer within 3s)",
        "the external service could not be reached (connection refused)",
    ],
)
def test_no_answer_is_worded_for_a_timeout_as_for_a_host_not_reached(reason: str) -> None:
    event = TaskFailed(
        correlation_id="corr-1", task=TASK, cause="dispatch_unreachable", reason=reason
    )

    text = render_comment(event, TEMPLATES).text

    assert text == (
        f"**Task failed**\n\nThe request to the external service got no answer:\n\n> {reason}"
    )


def test_error_reason_is_truncated_with_an_ellipsis() -> None:
    text = render_comment(failed("x" * 2000), TEMPLATES).text

    reason = text.rpartition("> ")[2]
    assert len(reason) == 500
    assert reason.endswith("x…")


def test_error_reason_cannot_break_out_of_the_quote() -> None:
    text = render_comment(failed("bad\n\n# Injected [link](https://evil.example)"), TEMPLATES).text

    assert text.endswith("> bad # Injected \\[link\\](`https://evil.example`)")


def test_error_reason_never_shows_an_echoed_credential() -> None:
    reason = "401 for Authorization: Bearer sk_live_abcdefghijklmnop0123 (api_key=abc123)"

    text = render_comment(failed(reason), TEMPLATES).text

    assert "sk_live_abcdefghijklmnop0123" not in text
    assert "abc123" not in text
    assert "401 for" in text


TOKEN = "dev." + "mmKQ" * 10 + "abc"


@pytest.mark.parametrize(
    ("reason", "secret"),
    [
        (f"callback was http://gw:8080/v1/callbacks/corr-1/{TOKEN} (retry)", TOKEN),
        (f"use token {TOKEN} to call back", TOKEN),
        ("credentials Bearer short-tok were rejected", "short-tok"),
        ("invalid api key sk_live_abcdefghijklmnop", "sk_live_abcdefghijklmnop"),
        ("credentials ApiKey sk-proj-AbC123xyz456789 were rejected", "sk-proj-AbC123xyz456789"),
        ('echo {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}', "dXNlcjpwYXNzd29yZA=="),
        ("github said ghp_" + "a1" * 12, "ghp_" + "a1" * 12),
        ("key AKIAABCDEFGHIJKLMNOP leaked", "AKIAABCDEFGHIJKLMNOP"),
        ("jwt eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeK", "eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeK"),
    ],
)
def test_error_reason_never_shows_a_token_or_credential(reason: str, secret: str) -> None:
    text = render_comment(failed(reason), TEMPLATES).text

    assert secret not in text
    assert "[redacted]" in text.replace("\\", "")


def test_nested_metadata_never_shows_secret_keys() -> None:
    event = completed(echo={"headers": {"Authorization": "xyz-123", "Accept": "json"}})

    text = render_comment(event, TEMPLATES).text

    assert "xyz-123" not in text
    assert "Accept" in text


@pytest.mark.parametrize(
    "message",
    ["see https://evil.example/phish now", "go to www.evil.example.", "ftp://x.example/a"],
)
def test_a_bare_url_from_outside_is_shown_as_code_never_as_a_link(message: str) -> None:
    event = TaskProgressed(
        correlation_id="corr-1", task=TASK, progress=5, message=message, deadline_at=DEADLINE
    )

    text = render_comment(event, TEMPLATES).text

    url = next(word for word in message.split() if "." in word and word[0] not in "s")
    url = url.rstrip(".")
    assert f"`{url}`" in text


def test_plain_words_are_not_taken_for_secrets() -> None:
    reason = "basic information about the token was missing; the password is wrong"

    text = render_comment(failed(reason), TEMPLATES).text

    assert reason in text


def test_expiry_names_the_timeout_in_words() -> None:
    event = TaskExpired(
        correlation_id="corr-1", task=TASK, deadline_at=DEADLINE, timeout_seconds=300
    )

    comment = render_comment(event, TEMPLATES)

    assert comment.kind == "expired"
    assert "did not answer within 5 minutes" in comment.text


def test_progress_shows_percent_and_message() -> None:
    event = TaskProgressed(
        correlation_id="corr-1",
        task=TASK,
        deadline_at=DEADLINE,
        progress=42.5,
        message="Rendering *frames*",
    )

    comment = render_comment(event, TEMPLATES)

    assert comment.kind == "progress"
    assert comment.text == "**In progress** 42.5%\n\nRendering \\*frames\\*"


@pytest.mark.parametrize(
    ("event", "outcome"),
    [
        (completed(), "completed"),
        (failed("no GPU"), "failed"),
        (
            TaskExpired(
                correlation_id="corr-1", task=TASK, deadline_at=DEADLINE, timeout_seconds=60
            ),
            "expired",
        ),
    ],
)
def test_a_progress_comment_ends_saying_how_the_task_ended(
    event: TaskCompleted | TaskFailed | TaskExpired, outcome: str
) -> None:
    assert render_progress_ended(event, TEMPLATES) == (
        f"**No longer in progress**: the task {outcome}. The outcome is in the comment below."
    )


def test_the_ended_progress_text_is_a_template_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "progress_ended.md").write_text("Done ($outcome) for $task_id\n")

    assert (
        render_progress_ended(completed(), load_templates(tmp_path))
        == "Done (completed) for task-1"
    )


@pytest.mark.parametrize(
    ("progress", "shown"),
    [
        (0, "0%"),
        (0.00001, "0%"),
        (60.0, "60%"),
        (33.33, "33.3%"),
        (99.99999, "99.9%"),
        (100, "100%"),
    ],
)
def test_progress_is_rounded_down_to_a_tenth_and_never_in_exponent_form(
    progress: float, shown: str
) -> None:
    event = TaskProgressed(
        correlation_id="corr-1", task=TASK, deadline_at=DEADLINE, progress=progress
    )

    assert render_comment(event, TEMPLATES).text == f"**In progress** {shown}"


@pytest.mark.parametrize(
    ("title", "heading", "details"),
    [
        (42, "**42**", ["- Episode: 3"]),
        (2.5, "**2\\.5**", ["- Episode: 3"]),  # escaped: "2." would start a list
        (True, "**Result ready**", ["- Title: yes", "- Episode: 3"]),
        ({"en": "Chess"}, "**Result ready**", ['- Title: {"en": "Chess"}', "- Episode: 3"]),
    ],
)
def test_a_title_that_is_not_text_is_shown_as_title_or_among_the_details(
    title: object, heading: str, details: list[str]
) -> None:
    text = render_comment(completed(title=title, episode=3), TEMPLATES).text

    assert text.splitlines() == [heading, "", *details]


def test_text_direction_overrides_and_zero_width_spaces_are_dropped() -> None:
    event = completed(title="invoice\u202egnp.exe", note="pay\u200bpal \u2066x\u2069")

    text = render_comment(event, TEMPLATES).text

    assert text.splitlines() == ["**invoicegnp.exe**", "", "- Note: paypal x"]


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "1 second"),
        (90, "1 minute 30 seconds"),
        (300, "5 minutes"),
        (3600, "1 hour"),
        (5400, "1 hour 30 minutes"),
        (2 * 86_400 + 3 * 3600 + 7, "2 days 3 hours"),
    ],
)
def test_humanise_seconds(seconds: int, words: str) -> None:
    assert humanise_seconds(seconds) == words


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("duration", "Duration"),
        ("fileSize", "File size"),
        ("file_size", "File size"),
        ("frame-rate", "Frame rate"),
        ("HTTPStatus", "HTTP status"),
        ("resultURL", "Result URL"),
    ],
)
def test_humanise_key(key: str, label: str) -> None:
    assert humanise_key(key) == label


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "javascript:alert(1)", "data:text/html,hi", "https:///nohost", "/x"],
)
def test_only_absolute_http_urls_become_links(url: str) -> None:
    assert safe_link_target(url) is None


def test_link_target_cannot_close_the_link_early() -> None:
    assert safe_link_target("https://e.example/a b)(c") == "https://e.example/a%20b%29%28c"


def test_escaping_keeps_block_markers_literal_at_line_start() -> None:
    assert escape_markdown("1. one") == "1\\. one"
    assert escape_markdown("- item") == "\\- item"
    assert escape_markdown("a & b") == "a &amp; b"


def test_template_override_replaces_only_the_files_present(tmp_path: Path) -> None:
    (tmp_path / "result.md").write_text("Done: $title ($correlation_id)\n$details\n")

    templates = load_templates(tmp_path)

    assert render_comment(completed(title="Clip", size="1 MB"), templates).text == (
        "Done: Clip (corr-1)\n- Size: 1 MB"
    )
    assert render_comment(failed("nope"), templates).text.startswith("**Task failed**")


def test_template_override_with_an_unknown_placeholder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "error.md").write_text("Failed: $reason for $webhook_auth\n")

    with pytest.raises(TemplateError, match="webhook_auth"):
        load_templates(tmp_path)


def test_template_override_with_a_stray_dollar_is_refused(tmp_path: Path) -> None:
    (tmp_path / "expired.md").write_text("Costs $ 5\n")

    with pytest.raises(TemplateError, match=r"\$\$"):
        load_templates(tmp_path)


def test_owner_and_followers_are_each_told_once() -> None:
    task = TaskRef(
        task_id="t", user_id="owner", project_id="p", followers=("ann", "owner", "bob", "ann")
    )

    assert users_to_tell(task) == ["owner", "ann", "bob"]


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/app")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("KAFKA_ENABLE_IDEMPOTENCE", "false")
    monkeypatch.setenv("TOPIC_PREFIX", "staging")
    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(tmp_path))

    settings = NotifierSettings()

    assert settings.database_schema == "notifier"
    assert settings.notifier_templates_dir == tmp_path
    assert settings.topics.task_lifecycle == "staging.task-lifecycle"
    assert settings.consumer_group == "staging.notifier"


def test_settings_refuse_a_templates_dir_that_does_not_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/app")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    monkeypatch.setenv("NOTIFIER_TEMPLATES_DIR", str(tmp_path / "missing"))

    with pytest.raises(ValidationError, match="notifier_templates_dir"):
        NotifierSettings()


def test_template_override_with_a_misspelt_file_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results.md").write_text("$title\n")

    with pytest.raises(TemplateError, match=r"results\.md"):
        load_templates(tmp_path)


def test_numbers_in_metadata_keep_every_digit_the_service_sent() -> None:
    event = completed(latitude=52.520008, fileSizeBytes=131072000.0, price=1234567.89, tiny=1e-07)

    text = render_comment(event, TEMPLATES).text.replace("\\", "")

    assert "- Latitude: 52.520008" in text
    assert "- File size bytes: 131072000" in text
    assert "- Price: 1234567.89" in text
    assert "- Tiny: 1e-07" in text


def test_facts_about_a_credential_are_shown_but_the_credential_is_not() -> None:
    event = completed(tokenCount=1523, signatureStatus="valid", authToken="tok-789")

    text = render_comment(event, TEMPLATES).text

    assert "- Token count: 1523" in text
    assert "- Signature status: valid" in text
    assert "tok-789" not in text


def test_a_credential_after_an_authorization_scheme_word_is_hidden() -> None:
    reason = "storage rejected: Authorization: Token 9944b09199c62bcf9418ad846dd0e4bb, retry"

    text = render_comment(failed(reason), TEMPLATES).text

    assert "9944b091" not in text
    assert "retry" in text


def test_metadata_under_plural_or_short_secret_names_is_left_out() -> None:
    event = completed(
        secrets={"db": "hunter2-prod"}, tokens={"refresh": "1//0gLq8Zr"}, pwd="hunter3", size=3
    )

    text = render_comment(event, TEMPLATES).text

    assert "hunter2-prod" not in text
    assert "1//0gLq8Zr" not in text
    assert "hunter3" not in text
    assert "- Size: 3" in text


def test_only_what_can_be_shown_is_searched_for_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # Masking is regular expressions over the text: over a megabyte of metadata it took the
    # notifier's event loop minutes. What it is given is bounded by what is shown.
    searched: list[int] = []
    redact = comments.redact_secrets

    def measured(text: str) -> str:
        searched.append(len(text))
        return redact(text)

    monkeypatch.setattr(comments, "redact_secrets", measured)
    huge = "v1.2-" * 200_000

    text = render_comment(completed(title=huge, notes=huge), TEMPLATES).text

    assert max(searched) <= comments.MAX_VALUE_LENGTH + 8192
    assert "v1.2-v1.2-" in text.replace("\\", "")


def test_a_credential_that_starts_within_the_shown_text_is_hidden_whole() -> None:
    secret = "sk_live_" + "Q" * 60
    for at in range(comments.MAX_VALUE_LENGTH - 70, comments.MAX_VALUE_LENGTH):
        text = render_comment(completed(notes="n" * at + " " + secret), TEMPLATES).text
        assert "sk_live" not in text or secret in text, at
        assert "QQQQQQQQ" not in text, at
