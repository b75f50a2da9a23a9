"""The sealer: only the right task and a configured key open a sealed secret, and an echoed
credential is found by its fingerprints alone."""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote_plus

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from pydantic import SecretStr
from webhook_tasks_contracts import CallbackKey
from webhook_tasks_dispatcher.sealing import RequestSealer, SealError, mask_strings

OLD = CallbackKey("old", b"o" * 32)
NEW = CallbackKey("new", b"n" * 32)
SECRET = SecretStr("Bearer s3cr3t")
SEALER = RequestSealer([NEW, OLD])


def test_a_sealed_secret_opens_for_its_task_only() -> None:
    sealer = RequestSealer([NEW, OLD])
    sealed = sealer.seal("task-1", SECRET)

    assert sealed.get_secret_value().startswith("sealed:v1:new:")
    assert "s3cr3t" not in sealed.get_secret_value()
    assert sealer.open("task-1", sealed).get_secret_value() == "Bearer s3cr3t"
    with pytest.raises(SealError, match="cannot be opened"):
        sealer.open("task-2", sealed)


def test_two_seals_of_one_secret_differ() -> None:
    sealer = RequestSealer([NEW])
    assert sealer.seal("t", SECRET) != sealer.seal("t", SECRET)


def test_an_altered_seal_is_refused_without_quoting_it() -> None:
    sealer = RequestSealer([NEW])
    value = sealer.seal("t", SECRET).get_secret_value()
    # A character inside the nonce and ciphertext (the last ones may be padding bits only).
    middle = len(value) - 20
    altered = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]

    with pytest.raises(SealError) as refused:
        sealer.open("t", SecretStr(altered))
    assert altered not in str(refused.value)


def test_a_retired_key_is_named_and_a_value_from_before_sealing_is_used_as_is() -> None:
    sealed = RequestSealer([OLD]).seal("t", SECRET)
    with pytest.raises(SealError, match="key 'old'"):
        RequestSealer([NEW]).open("t", sealed)
    assert RequestSealer([NEW, OLD]).open("t", sealed).get_secret_value() == "Bearer s3cr3t"
    assert RequestSealer([NEW]).open("t", SECRET) == SECRET


TOKEN = "tk_9f8e7d6c5b4a"
BASIC = "Basic " + base64.b64encode(b"svc-user:pa55word!").decode()


def mask_for(secret: str, sealer: RequestSealer | None = None) -> Callable[[str], str]:
    sealer = sealer or RequestSealer([NEW, OLD])
    mask = sealer.masker(sealer.fingerprint(SecretStr(secret)))
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
    sealer = RequestSealer([NEW])
    stored = sealer.fingerprint(SecretStr(BASIC))

    assert stored.startswith("v1:new:")
    for part in (BASIC, BASIC.split()[1], "pa55word!", "svc-user"):
        assert part not in stored
        assert base64.urlsafe_b64encode(part.encode()).decode() not in stored


def test_fingerprints_of_a_retired_key_or_altered_match_nothing() -> None:
    stored = RequestSealer([OLD]).fingerprint(SecretStr(f"Bearer {TOKEN}"))

    assert RequestSealer([NEW]).masker(stored) is None
    assert RequestSealer([NEW, OLD]).masker(stored) is not None
    assert RequestSealer([OLD]).masker(None) is None
    assert RequestSealer([OLD]).masker("v2:old:AAAA") is None
    assert RequestSealer([OLD]).masker("v1:old:@@@") is None


def test_strings_anywhere_in_metadata_are_masked_and_keys_are_kept() -> None:
    mask = mask_for(TOKEN)
    metadata = {"echo": {"headers": [f"Authorization: {TOKEN}", 3, None]}, TOKEN: True}

    assert mask_strings(metadata, mask) == {
        "echo": {"headers": ["Authorization: **********", 3, None]},
        TOKEN: True,
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
    mask = mask_for(secret, SEALER)

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
    mask = mask_for(secret, SEALER)
    encoded = encode(secret)
    if lower_hex:
        encoded = re.sub(r"%[0-9A-F]{2}", lambda found: found.group().lower(), encoded)
    masked = mask(f"callback from https://r.example/done?auth={encoded}&n=1")

    assert encoded not in masked
    assert secret not in unquote_plus(masked)
