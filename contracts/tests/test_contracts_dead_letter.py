"""Dead letters: what they record of a rejected message, old ones included."""

from __future__ import annotations

from webhook_tasks_contracts import DeadLetter


def test_a_dead_letter_written_before_size_digest_and_flags_existed_still_parses() -> None:
    old = (
        '{"source_topic": "acme.task-requested", "partition": 2, "offset": 41,'
        ' "consumer": "dispatcher", "reason": "message: Invalid JSON", "key": "task-1",'
        ' "value_base64": "bm90IGpzb24=", "rejected_at": "2025-01-02T03:04:05Z"}'
    )

    letter = DeadLetter.model_validate_json(old)

    assert (letter.partition, letter.offset) == (2, 41)
    assert letter.value_size is None
    assert letter.value_sha256 is None
    assert letter.truncated is False
    assert letter.redacted is False


def test_a_dead_letter_round_trips_with_size_digest_and_flags() -> None:
    letter = DeadLetter(
        source_topic="acme.task-requested",
        partition=0,
        offset=7,
        consumer="dispatcher",
        reason="followers: Input should be a valid list",
        key="task-1",
        value_base64="e30=",
        value_size=900_000,
        value_sha256="ab" * 32,
        truncated=True,
        redacted=True,
    )

    assert DeadLetter.model_validate_json(letter.model_dump_json()) == letter
