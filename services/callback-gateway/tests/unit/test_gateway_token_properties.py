"""Properties of callback tokens: any change to token, id, key or fingerprints fails."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import SecretStr
from webhook_tasks_contracts import NO_ENDPOINT, CallbackKey, CallbackTokens, VerifiedToken

secrets = st.binary(min_size=32, max_size=64)
key_ids = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
endpoints = st.none() | st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
correlation_ids = st.text(min_size=1, max_size=200)
credentials = st.none() | st.from_regex(
    r"(Bearer |Basic )?[A-Za-z0-9._~+/=-]{6,40}", fullmatch=True
)


@st.composite
def rings(draw: st.DrawFn) -> CallbackTokens:
    ids = draw(st.lists(key_ids, min_size=1, max_size=3, unique=True))
    return CallbackTokens([CallbackKey(key_id, draw(secrets)) for key_id in ids])


@st.composite
def edits(draw: st.DrawFn, text: str) -> str:
    """Return `text` changed by one edit, often at a '.' where the token's parts meet."""
    kind = draw(st.sampled_from(["replace", "insert", "delete", "duplicate", "other"]))
    separators = [i for i, char in enumerate(text) if char == "."]
    anywhere = st.integers(0, max(len(text) - 1, 0))
    at = draw(st.sampled_from(separators) | anywhere if separators else anywhere)
    char = draw(st.sampled_from(".-_aA0") | st.characters())
    if kind == "replace" and text:
        changed = text[:at] + char + text[at + 1 :]
    elif kind == "insert":
        changed = text[:at] + char + text[at:]
    elif kind == "delete" and text:
        changed = text[:at] + text[at + 1 :]
    elif kind == "duplicate" and text:
        changed = text[:at] + text[at] + text[at:]
    else:
        changed = draw(st.text(max_size=120))
    assume(changed != text)
    return changed


def old_verify(keys: dict[str, bytes], correlation_id: str, token: str) -> bool:
    """The check as it was before endpoints: the behaviour callers rely on.

    (It raised on a lone surrogate, which no decoded URL holds; now such an id gets a MAC.)
    """
    key_id, sep, mac = token.partition(".")
    secret = keys.get(key_id)
    if not sep or secret is None:
        return False
    digest = hmac.new(
        secret,
        b"webhook-tasks/callback/v1:" + correlation_id.encode("utf-8", "surrogatepass"),
        hashlib.sha256,
    ).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return hmac.compare_digest(mac.encode(), expected.encode())


@given(rings(), correlation_ids, endpoints, credentials)
def test_a_minted_token_verifies_with_its_endpoint_and_fingerprints(
    tokens: CallbackTokens, correlation_id: str, endpoint: str | None, credential: str | None
) -> None:
    echoes = tokens.fingerprints.of(SecretStr(credential)) if credential else None
    token = tokens.mint(correlation_id, endpoint=endpoint, echoes=echoes)

    assert tokens.verified(correlation_id, token) == VerifiedToken(endpoint or NO_ENDPOINT, echoes)
    assert tokens.verify(correlation_id, token) is (endpoint is None)


@given(st.data(), rings(), correlation_ids, endpoints, credentials)
def test_any_change_to_the_token_is_rejected(
    data: st.DataObject,
    tokens: CallbackTokens,
    correlation_id: str,
    endpoint: str | None,
    credential: str | None,
) -> None:
    echoes = tokens.fingerprints.of(SecretStr(credential)) if credential else None
    token = tokens.mint(correlation_id, endpoint=endpoint, echoes=echoes)

    forged = data.draw(edits(token))

    assert tokens.verified(correlation_id, forged) is None
    assert not tokens.verify(correlation_id, forged)


@given(st.data(), rings(), correlation_ids, endpoints)
def test_any_change_to_the_correlation_id_is_rejected(
    data: st.DataObject, tokens: CallbackTokens, correlation_id: str, endpoint: str | None
) -> None:
    token = tokens.mint(correlation_id, endpoint=endpoint)

    other = data.draw(edits(correlation_id))

    assert tokens.verified_endpoint(other, token) is None


@given(key_ids, secrets, secrets, correlation_ids, endpoints)
def test_a_token_under_any_other_key_is_rejected(
    key_id: str, ours: bytes, theirs: bytes, correlation_id: str, endpoint: str | None
) -> None:
    assume(ours != theirs)
    forged = CallbackTokens([CallbackKey(key_id, theirs)]).mint(correlation_id, endpoint=endpoint)

    assert (
        CallbackTokens([CallbackKey(key_id, ours)]).verified_endpoint(correlation_id, forged)
        is None
    )


@given(rings(), correlation_ids, endpoints, endpoints)
def test_the_endpoint_cannot_be_swapped_or_removed(
    tokens: CallbackTokens, correlation_id: str, bound: str | None, other: str | None
) -> None:
    assume(bound != other)
    key_id, _, _ = tokens.mint(correlation_id).partition(".")
    mac = tokens.mint(correlation_id, endpoint=bound).rpartition(".")[2]
    swapped = f"{key_id}.{other}.{mac}" if other else f"{key_id}.{mac}"

    assert tokens.verified_endpoint(correlation_id, swapped) is None


@given(st.lists(st.tuples(key_ids, secrets), min_size=1, max_size=3), correlation_ids, st.data())
def test_verify_answers_as_before_endpoints_for_any_token(
    keys: list[tuple[str, bytes]], correlation_id: str, data: st.DataObject
) -> None:
    by_id = dict(keys)
    tokens = CallbackTokens([CallbackKey(key_id, secret) for key_id, secret in by_id.items()])
    minted = tokens.mint(correlation_id)
    token = data.draw(st.sampled_from([minted]) | edits(minted) | st.text(max_size=80))

    assert tokens.verify(correlation_id, token) is old_verify(by_id, correlation_id, token)
