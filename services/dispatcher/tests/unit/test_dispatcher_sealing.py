"""The sealer: only the right task and a configured key open a sealed secret."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from webhook_tasks_contracts import CallbackKey
from webhook_tasks_dispatcher.sealing import RequestSealer, SealError

OLD = CallbackKey("old", b"o" * 32)
NEW = CallbackKey("new", b"n" * 32)
SECRET = SecretStr("Bearer s3cr3t")


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
