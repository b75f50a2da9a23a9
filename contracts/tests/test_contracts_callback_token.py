"""The callback token: only our keys mint it, any change breaks it, rotation keeps old keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest
from pydantic import SecretStr
from webhook_tasks_contracts import (
    NO_ENDPOINT,
    CallbackKey,
    CallbackKeyError,
    CallbackTokens,
    CredentialFingerprints,
    Fingerprints,
    VerifiedToken,
    callback_url,
    parse_callback_keys,
)

KEY_A = CallbackKey("a", b"a" * 32)
KEY_B = CallbackKey("b", b"b" * 32)


def fingerprints_of(secret: str) -> Fingerprints:
    fingerprints = CredentialFingerprints([KEY_A]).of(SecretStr(secret))
    assert fingerprints is not None
    return fingerprints


ECHOES = fingerprints_of("Bearer tk_live_0123456789")
OTHER_ECHOES = fingerprints_of("Bearer tk_live_9876543210")


def test_a_minted_token_verifies_for_its_correlation_id_only() -> None:
    tokens = CallbackTokens([KEY_A])
    token = tokens.mint("cid-1")

    assert tokens.verify("cid-1", token)
    assert not tokens.verify("cid-2", token)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t.replace("a.", "b.", 1),
        lambda t: t.split(".", 1)[1],
        lambda t: "",
        lambda t: "a.",
        lambda t: "zz." + t.split(".", 1)[1],
    ],
)
def test_a_changed_token_is_rejected(tamper: Callable[[str], str]) -> None:
    tokens = CallbackTokens([KEY_A, KEY_B])
    token = tokens.mint("cid")

    assert not tokens.verify("cid", tamper(token))


def test_rotation_mints_with_the_newest_key_and_accepts_older_ones() -> None:
    old_ring = CallbackTokens([KEY_A])
    new_ring = CallbackTokens([KEY_B, KEY_A])
    old_token = old_ring.mint("cid")

    assert new_ring.mint("cid").startswith("b.")
    assert new_ring.verify("cid", old_token)
    assert not CallbackTokens([KEY_B]).verify("cid", old_token)


def test_a_token_from_another_secret_is_rejected() -> None:
    ours = CallbackTokens([KEY_A])
    theirs = CallbackTokens([CallbackKey("a", b"x" * 32)])

    assert not ours.verify("cid", theirs.mint("cid"))


def test_callback_url_carries_id_and_token_escaped() -> None:
    url = callback_url("https://gw.example.com/", "id/with space", "a.tok")

    assert url == "https://gw.example.com/v1/callbacks/id%2Fwith%20space/a.tok"


def test_keys_parse_from_the_environment_format() -> None:
    raw = base64.b64encode(b"k" * 40).decode()
    keys = parse_callback_keys(f"new:base64:{raw}, old:{'s' * 32}")

    assert [key.key_id for key in keys] == ["new", "old"]
    assert keys[0].secret == b"k" * 40


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "at least one"),
        ("nosecret", "id:secret"),
        ("a:short", "too short"),
        (f"a:{'s' * 32},a:{'t' * 32}", "unique"),
        ("a:base64:!!!", "not valid base64"),
        (f"bad id:{'s' * 32}", "letters, digits"),
    ],
)
def test_unusable_keys_are_refused_without_quoting_the_secret(spec: str, message: str) -> None:
    with pytest.raises(CallbackKeyError, match=message) as raised:
        parse_callback_keys(spec)

    assert "s" * 32 not in str(raised.value)


@pytest.mark.parametrize(
    "spec",
    [
        "ThisIsMySuperSecretKeyValue12345:current",
        "ThisIsMySuperSecretKeyValue12345:base64:" + base64.b64encode(b"x" * 8).decode(),
        "ThisIsMySuperSecretKeyValue12345:base64:current!",
    ],
)
def test_an_entry_with_id_and_secret_swapped_is_named_by_position_only(spec: str) -> None:
    with pytest.raises(CallbackKeyError) as raised:
        parse_callback_keys(f"ok:{'s' * 32},{spec}")

    assert "callback key #2" in str(raised.value)
    assert "ThisIsMySuperSecretKeyValue12345" not in str(raised.value)


@pytest.mark.parametrize("tail", ["\udc80", "caf\u00e9", "\u0661\u0662", "\x00"])
def test_a_token_with_text_no_mac_holds_is_not_ours(tail: str) -> None:
    tokens = CallbackTokens([KEY_A])
    mac = tokens.mint("cid").partition(".")[2]

    assert tokens.verified_endpoint("cid", f"a.{tail}") is None
    assert tokens.verified_endpoint("cid", f"a.{mac[:-1]}{tail}") is None
    assert tokens.verified_endpoint("cid", f"a.video-gen.{tail}") is None
    assert not tokens.verify("cid", f"a.{mac}{tail}")


def test_a_key_never_shows_its_secret() -> None:
    assert "a" * 32 not in repr(KEY_A)


def test_a_token_without_endpoint_is_exactly_the_documented_mac() -> None:
    mac = hmac.new(b"a" * 32, b"webhook-tasks/callback/v1:cid", hashlib.sha256).digest()

    assert CallbackTokens([KEY_A]).mint("cid") == (
        "a." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    )


def test_an_endpoint_bound_token_names_its_endpoint_and_verifies_only_with_it() -> None:
    tokens = CallbackTokens([KEY_A])
    token = tokens.mint("cid", endpoint="video-gen")
    mac = hmac.new(
        b"a" * 32, b"webhook-tasks/callback/v1/endpoint:video-gen:cid", hashlib.sha256
    ).digest()

    assert token == "a.video-gen." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert tokens.verified_endpoint("cid", token) == "video-gen"
    assert tokens.verified_endpoint("cid", token.replace("video-gen", "other")) is None
    assert tokens.verified_endpoint("cid", "a." + token.rpartition(".")[2]) is None
    # The endpoint-blind check refuses it: its caller could not require the signature.
    assert not tokens.verify("cid", token)


def test_an_unbound_token_verifies_as_bound_to_no_endpoint() -> None:
    tokens = CallbackTokens([KEY_A])

    assert tokens.verified_endpoint("cid", tokens.mint("cid")) == NO_ENDPOINT
    assert tokens.callback_url("https://gw", "cid") == callback_url(
        "https://gw", "cid", tokens.mint("cid")
    )
    assert tokens.callback_url("https://gw", "cid", endpoint="e1").endswith(
        "/cid/" + tokens.mint("cid", endpoint="e1")
    )


@pytest.mark.parametrize("endpoint", ["", "a.b", "a:b", "x" * 65, "é", "svc\n"])
def test_an_endpoint_name_that_cannot_be_parsed_back_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint name"):
        CallbackTokens([KEY_A]).mint("cid", endpoint=endpoint)


@pytest.mark.parametrize("endpoint", [None, "video-gen"])
def test_a_token_carries_the_credentials_fingerprints_under_its_mac(endpoint: str | None) -> None:
    tokens = CallbackTokens([KEY_A])
    token = tokens.mint("cid", endpoint=endpoint, echoes=ECHOES)
    encoded = base64.urlsafe_b64encode(ECHOES.digests).rstrip(b"=").decode()
    message = f"webhook-tasks/callback/v1/echoes:{endpoint or ''}:{encoded}:cid".encode()
    mac = hmac.new(b"a" * 32, message, hashlib.sha256).digest()

    assert token == f"a.{endpoint or ''}.{encoded}." + (
        base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    )
    assert tokens.verified("cid", token) == VerifiedToken(endpoint or NO_ENDPOINT, ECHOES)
    assert tokens.verified_endpoint("cid", token) == (endpoint or NO_ENDPOINT)
    assert tokens.verify("cid", token) is (endpoint is None)
    assert tokens.verified("other", token) is None
    assert tokens.verified("cid", tokens.mint("cid", endpoint=endpoint)) == VerifiedToken(
        endpoint or NO_ENDPOINT, None
    )


def test_fingerprints_cannot_be_swapped_dropped_or_moved_to_another_endpoint() -> None:
    tokens = CallbackTokens([KEY_A])
    key_id, endpoint, encoded, mac = tokens.mint("cid", endpoint="e1", echoes=ECHOES).split(".")
    other = base64.urlsafe_b64encode(OTHER_ECHOES.digests).rstrip(b"=").decode()

    for forged in (
        f"{key_id}.{endpoint}.{other}.{mac}",
        f"{key_id}.{endpoint}.{mac}",
        f"{key_id}..{encoded}.{mac}",
        f"{key_id}.e2.{encoded}.{mac}",
        f"{key_id}.{endpoint}.{encoded}A.{mac}",
        f"{key_id}.{endpoint}.{encoded[:-1]}.{mac}",
        f"{key_id}.{endpoint}.{encoded}.{mac}.{mac}",
    ):
        assert tokens.verified("cid", forged) is None, forged


def test_fingerprints_only_of_the_newest_key_and_whole_are_minted() -> None:
    rotated = CallbackTokens([KEY_B, KEY_A])

    with pytest.raises(ValueError, match="newest key"):
        rotated.mint("cid", echoes=ECHOES)
    with pytest.raises(ValueError, match="whole"):
        CallbackTokens([KEY_A]).mint("cid", echoes=type(ECHOES)("a", ECHOES.digests[:-1]))
    # Minted before the rotation, the token still verifies, fingerprints and all.
    assert rotated.verified("cid", CallbackTokens([KEY_A]).mint("cid", echoes=ECHOES)) == (
        VerifiedToken(NO_ENDPOINT, ECHOES)
    )
