"""Signature verification: what the official library signs verifies; any change is rejected."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from standardwebhooks import Webhook
from starlette.datastructures import Headers
from webhook_tasks_gateway.problems import InvalidSignatureError
from webhook_tasks_gateway.signatures import (
    SignatureVerifier,
    SigningSecretError,
    parse_signing_secrets,
)

NOW = 1_800_000_000
TOLERANCE = 300

raw_secrets = st.binary(min_size=16, max_size=64)
msg_ids = st.text(
    st.characters(codec="ascii", exclude_characters="\r\n\x00"), min_size=1, max_size=60
)
msg_ids = msg_ids.filter(lambda value: value.strip() == value)
bodies = st.text(max_size=300).map(str.encode)
timestamps = st.integers(NOW - TOLERANCE, NOW + TOLERANCE)


def whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


def sign(raw: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Sign as an external service would, with the official library."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = Webhook(whsec(raw)).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def verifier(*secrets: bytes) -> SignatureVerifier:
    return SignatureVerifier({"svc": secrets}, tolerance_seconds=TOLERANCE, clock=lambda: NOW)


def accepts(checker: SignatureVerifier, headers: dict[str, str], body: bytes) -> bool:
    try:
        delivery = checker.expect("svc", Headers(headers))
        assert delivery is not None
        delivery.verify(body)
    except InvalidSignatureError:
        return False
    return True


@given(raw_secrets, msg_ids, timestamps, bodies)
def test_what_the_official_library_signs_verifies(
    secret: bytes, msg_id: str, timestamp: int, body: bytes
) -> None:
    assert accepts(verifier(secret), sign(secret, msg_id, timestamp, body), body)


@given(raw_secrets, msg_ids, timestamps, bodies, bodies)
def test_any_change_to_the_body_is_rejected(
    secret: bytes, msg_id: str, timestamp: int, body: bytes, other: bytes
) -> None:
    assume(other != body)

    assert not accepts(verifier(secret), sign(secret, msg_id, timestamp, body), other)


@given(raw_secrets, msg_ids, timestamps, timestamps, bodies)
def test_any_change_to_the_timestamp_is_rejected(
    secret: bytes, msg_id: str, timestamp: int, other: int, body: bytes
) -> None:
    assume(other != timestamp)
    headers = sign(secret, msg_id, timestamp, body)
    headers["webhook-timestamp"] = str(other)

    assert not accepts(verifier(secret), headers, body)


@given(raw_secrets, msg_ids, msg_ids, timestamps, bodies)
def test_any_change_to_the_message_id_is_rejected(
    secret: bytes, msg_id: str, other: str, timestamp: int, body: bytes
) -> None:
    assume(other != msg_id)
    headers = sign(secret, msg_id, timestamp, body)
    headers["webhook-id"] = other

    assert not accepts(verifier(secret), headers, body)


@given(raw_secrets, raw_secrets, msg_ids, timestamps, bodies)
def test_a_signature_under_any_other_secret_is_rejected(
    secret: bytes, other: bytes, msg_id: str, timestamp: int, body: bytes
) -> None:
    assume(other != secret)

    assert not accepts(verifier(secret), sign(other, msg_id, timestamp, body), body)


@given(st.lists(raw_secrets, min_size=2, max_size=4, unique=True), st.data(), msg_ids, bodies)
def test_during_rotation_any_configured_secret_verifies(
    secrets: list[bytes], data: st.DataObject, msg_id: str, body: bytes
) -> None:
    signer = data.draw(st.sampled_from(secrets))

    assert accepts(verifier(*secrets), sign(signer, msg_id, NOW, body), body)


@given(raw_secrets, msg_ids, st.integers(TOLERANCE + 1, 10**9), st.booleans(), bodies)
def test_a_signed_timestamp_outside_the_tolerance_is_rejected(
    secret: bytes, msg_id: str, skew: int, future: bool, body: bytes
) -> None:
    timestamp = NOW + skew if future else NOW - skew
    assume(timestamp > 0)

    assert not accepts(verifier(secret), sign(secret, msg_id, timestamp, body), body)


@given(raw_secrets, msg_ids, bodies, st.lists(raw_secrets, max_size=3))
def test_a_valid_signature_among_others_verifies(
    secret: bytes, msg_id: str, body: bytes, decoys: list[bytes]
) -> None:
    headers = sign(secret, msg_id, NOW, body)
    others = [sign(decoy, msg_id, NOW, body)["webhook-signature"] for decoy in decoys]
    headers["webhook-signature"] = " ".join(
        ["v1a,c2lnbmF0dXJl", *others, headers["webhook-signature"]]
    )

    assert accepts(verifier(secret), headers, body)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_header_is_required(missing: str) -> None:
    secret = b"s" * 24
    headers = sign(secret, "msg_1", NOW, b"{}")
    del headers[missing]

    assert not accepts(verifier(secret), headers, b"{}")


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        ("1.8e9", None),
        ("-1800000000", None),
        ("18²0000000", None),  # isdigit() yet not int(): a refusal, never a crash
        (None, "v1"),
        (None, "v1,not base64!"),
        (None, "v2," + base64.b64encode(b"x" * 32).decode()),
        (None, " ".join(["v1,AAAA"] * 11)),
    ],
)
def test_malformed_headers_are_refused_not_crashed_on(
    timestamp: str | None, signature: str | None
) -> None:
    secret = b"s" * 24
    headers = sign(secret, "msg_1", NOW, b"{}")
    if timestamp is not None:
        headers["webhook-timestamp"] = timestamp
    if signature is not None:
        headers["webhook-signature"] = signature

    assert not accepts(verifier(secret), headers, b"{}")


def test_an_endpoint_without_secrets_needs_no_signature() -> None:
    checker = verifier(b"s" * 24)

    assert checker.expect("other", Headers({})) is None
    assert checker.expect("", Headers({})) is None


def test_secrets_parse_by_endpoint_with_rotation() -> None:
    new, old, other = b"n" * 24, b"o" * 24, b"x" * 32

    parsed = parse_signing_secrets(
        f"video:{whsec(new)}, video:{whsec(old)},asr:{base64.b64encode(other).decode().rstrip('=')}"
    )

    assert parsed == {"video": (new, old), "asr": (other,)}
    assert parse_signing_secrets("") == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("video", "must look like"),
        ("video:", "must look like"),
        ("bad.name:whsec_" + "A" * 32, "endpoint name"),
        ("video:whsec_%%%%secretvalue", "not whsec_<base64>"),
        ("video:whsec_c2VjcmV0", "too short"),
    ],
)
def test_unusable_secrets_are_refused_without_quoting_them(spec: str, message: str) -> None:
    with pytest.raises(SigningSecretError, match=message) as refused:
        parse_signing_secrets(spec)

    secret = spec.partition(":")[2]
    assert not secret or secret not in str(refused.value)


@pytest.mark.parametrize(
    "spec",
    [
        "whsec_c2VjcmV0c2VjcmV0c2VjcmV0:video",  # a name-like secret: too short a "secret"
        "whsec_c2VjcmV0c2VjcmV0c2VjcmV0:%%%%",  # not base64
        "whsec_c2VjcmV0c2VjcmV0c2VjcmV0",  # no colon at all
    ],
)
def test_an_entry_with_its_parts_swapped_is_named_by_position_only(spec: str) -> None:
    with pytest.raises(SigningSecretError) as refused:
        parse_signing_secrets(f"asr:whsec_{'A' * 32},{spec}")

    assert "signing secret #2" in str(refused.value)
    assert "c2VjcmV0c2VjcmV0c2VjcmV0" not in str(refused.value)
