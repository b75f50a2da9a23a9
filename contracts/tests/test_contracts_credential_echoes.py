"""Credential fingerprints: an echoed credential is found, and masked, by its fingerprints alone."""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote_plus

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import SecretStr
from webhook_tasks_contracts import (
    CallbackKey,
    CallbackReceived,
    CredentialFingerprints,
    Masker,
    credential_masker,
    mask_strings,
)

OLD = CallbackKey("old", b"o" * 32)
NEW = CallbackKey("new", b"n" * 32)
BOTH = CredentialFingerprints([NEW, OLD])


TOKEN = "tk_9f8e7d6c5b4a"
BASIC = "Basic " + base64.b64encode(b"svc-user:pa55word!").decode()


def mask_for(secret: str, fingerprints: CredentialFingerprints = BOTH) -> Masker:
    mask = fingerprints.masker(fingerprints.of(SecretStr(secret)))
    assert mask is not None
    return mask


@pytest.mark.parametrize(
    ("secret", "text", "expected"),
    [
        (f"Bearer {TOKEN}", f"401: Bearer {TOKEN} was refused", "401: Bearer ********** was"),
        (f"Bearer {TOKEN}", f'{{"auth": "{TOKEN}"}}', '{"auth": "**********"}'),
        (f"Bearer {TOKEN}", f"bad token={TOKEN}.", "bad token=**********."),
        (f"Bearer {TOKEN}", f"https://r.example/x?key={TOKEN}&a=1", "?key=**********&a=1"),
        (TOKEN, f"unknown key {TOKEN}; check it", "unknown key **********; check it"),
        (BASIC, "password pa55word! is wrong", "password ********** is wrong"),
        (BASIC, f"got {BASIC.split()[1]}", "got **********"),
        (f"Bearer {TOKEN}", f"see /r?auth=Bearer%20{TOKEN}&a=1", "/r?auth=**********&a=1"),
        (f"Bearer {TOKEN}", f"see /r?auth=Bearer+{TOKEN}&a=1", "/r?auth=**********&a=1"),
        (f"Bearer {TOKEN}", f"/r?q=token%3D{TOKEN}", "/r?q=token%3D**********"),
        (BASIC, "/r?pw=pa55word%21", "/r?pw=**********"),
        (BASIC, "/r?pw=pa55word%21&next=1", "/r?pw=**********&next=1"),
        (
            f"Bearer {TOKEN}",
            f"https://r.example/a/b/c/d?w=1&x=2&y=3&z=4&key={TOKEN}&end=1",
            "&key=**********&end=1",
        ),
    ],
)
def test_an_echoed_credential_is_masked_wherever_a_text_holds_it(
    secret: str, text: str, expected: str
) -> None:
    masked = mask_for(secret)(text)

    assert expected in masked
    for part in (TOKEN, "pa55word", BASIC.split()[1]):
        assert part not in masked


def test_text_without_the_credential_is_left_as_it_is() -> None:
    mask = mask_for(f"Bearer {TOKEN}")
    text = "Bearer tk_000000000000 refused; token tk_9f8e7d6c5b4 (one short) too"

    assert mask(text) == text


def test_fingerprints_hold_no_part_of_the_credential() -> None:
    stored = str(CredentialFingerprints([NEW]).of(SecretStr(BASIC)))

    assert stored.startswith("v1:new:")
    for part in (BASIC, BASIC.split()[1], "pa55word!", "svc-user"):
        assert part not in stored
        assert base64.urlsafe_b64encode(part.encode()).decode() not in stored


def test_a_credential_with_no_part_long_enough_to_look_for_has_no_fingerprints() -> None:
    assert BOTH.of(SecretStr("k3y")) is None
    assert BOTH.of(SecretStr("Bearer ab")) is not None  # the whole value is long enough


def test_fingerprints_of_a_retired_key_or_altered_match_nothing() -> None:
    stored = str(CredentialFingerprints([OLD]).of(SecretStr(f"Bearer {TOKEN}")))

    assert CredentialFingerprints([NEW]).masker(stored) is None
    assert CredentialFingerprints([NEW, OLD]).masker(stored) is not None
    assert CredentialFingerprints([OLD]).masker(None) is None
    assert CredentialFingerprints([OLD]).masker("v2:old:AAAA") is None
    assert CredentialFingerprints([OLD]).masker("v1:old:@@@") is None
    assert CredentialFingerprints([OLD]).masker("v1:old:" + "A" * 24) is None  # not whole


def test_strings_anywhere_in_metadata_are_masked_keys_included() -> None:
    mask = mask_for(TOKEN)
    metadata = {
        "echo": {"headers": [f"Authorization: {TOKEN}", 3, None], f"Bearer {TOKEN}": "x"},
        TOKEN: True,
        "**********": "taken",
    }

    assert mask_strings(metadata, mask) == {
        "echo": {"headers": ["Authorization: **********", 3, None], "Bearer **********": "x"},
        "********** (2)": True,
        "**********": "taken",
    }


@given(
    secret=st.text(alphabet=string.ascii_letters + string.digits + "-_.~+/=:", min_size=8),
    before=st.sampled_from(["", " ", "x=", '"', "(", "key:", "Bearer "]),
    after=st.sampled_from(["", " ", '"', ")", ";", ",", "&a=1"]),
)
def test_a_credential_between_delimiters_never_survives(
    secret: str, before: str, after: str
) -> None:
    secret = secret.strip(".")
    assume(len(secret) >= 8)
    mask = mask_for(secret)

    assert secret not in mask(f"the service said {before}{secret}{after} back")


@given(
    secret=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs")),
        min_size=8,
    ),
    encode=st.sampled_from([quote, quote_plus, lambda text: quote(text, safe="")]),
    lower_hex=st.booleans(),
)
# Separators inside the credential, and a URL with more than a dozen around it.
@example(secret="0:===/#0", encode=quote, lower_hex=False)
def test_a_credential_percent_encoded_in_a_url_never_survives(
    secret: str, encode: Callable[[str], str], lower_hex: bool
) -> None:
    assume(secret.strip("*"))  # else the mask itself spells it
    mask = mask_for(secret)
    encoded = encode(secret)
    if lower_hex:
        encoded = re.sub(r"%[0-9A-F]{2}", lambda found: found.group().lower(), encoded)
    masked = mask(f"callback from https://r.example/done?auth={encoded}&n=1")

    assert encoded not in masked
    assert secret not in unquote_plus(masked)


def test_a_callback_is_masked_in_every_text_its_sender_wrote_and_left_alone_without_an_echo() -> (
    None
):
    fingerprints = BOTH.of(SecretStr(f"Bearer {TOKEN}"))
    echoing = CallbackReceived(
        correlation_id="c-1",
        status="success",
        result_url=f"https://cdn.example.com/v.mp4?auth={TOKEN}",
        metadata={"request": {"authorization": f"Bearer {TOKEN}"}, "n": 1},
    )
    erring = CallbackReceived(correlation_id="c-1", status="error", error=f"401 for {TOKEN}")
    progressing = CallbackReceived(
        correlation_id="c-1", status="progress", progress=5, message=f"using {TOKEN}"
    )
    quiet = CallbackReceived(correlation_id="c-1", status="success", metadata={"n": 1})

    masked = BOTH.mask_callback(echoing, fingerprints)
    assert masked.result_url == "https://cdn.example.com/v.mp4?auth=**********"
    assert masked.metadata == {"request": {"authorization": "Bearer **********"}, "n": 1}
    assert masked.event_id == echoing.event_id
    assert BOTH.mask_callback(erring, str(fingerprints)).error == "401 for **********"
    assert BOTH.mask_callback(progressing, fingerprints).message == "using **********"
    assert BOTH.mask_callback(quiet, fingerprints) is quiet
    assert BOTH.mask_callback(echoing, None) is echoing
    assert CredentialFingerprints([NEW]).mask_callback(echoing, "v1:gone:AAAA") is echoing


@given(
    credential=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs")),
        min_size=6,
    ),
    scheme=st.sampled_from(["", "Bearer ", "Token "]),
    form=st.sampled_from(["as is", "JSON", "JSON, ASCII", "URL"]),
)
def test_the_credential_masker_leaves_no_form_of_the_credential_or_its_value(
    credential: str, scheme: str, form: str
) -> None:
    assume("*" not in credential and credential == credential.strip())
    secret = scheme + credential
    mask = credential_masker(SecretStr(secret))
    for echoed in (secret, credential):
        written = {
            "as is": echoed,
            "JSON": json.dumps(echoed, ensure_ascii=False)[1:-1],
            "JSON, ASCII": json.dumps(echoed)[1:-1],
            "URL": quote(echoed, safe=""),
        }[form]
        masked = mask(f"the service said {written}, twice: {written}")

        assert written not in masked
        assert masked.count("**********") == 2


def test_the_credential_masker_keeps_json_valid_and_other_text_as_it_is() -> None:
    mask = credential_masker(SecretStr(f"Bearer {TOKEN}"))
    answer = json.dumps({"error": f"bad token {TOKEN}", "url": f"/r?a=Bearer%20{TOKEN}", "n": 1})

    assert json.loads(mask(answer)) == {
        "error": "bad token **********",
        "url": "/r?a=**********",
        "n": 1,
    }
    assert mask("nothing to see") == "nothing to see"
