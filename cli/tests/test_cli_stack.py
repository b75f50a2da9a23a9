"""How the stack names the processes of a service run more than once."""

from __future__ import annotations

import pytest
from webhook_tasks_cli.stack import StackError, replica_name


def test_the_first_replica_is_the_service_itself_and_later_ones_are_numbered() -> None:
    assert replica_name("dispatcher", 1) == "dispatcher"
    assert replica_name("dispatcher", 2) == "dispatcher.2"
    assert replica_name("callback-gateway", 3) == "callback-gateway.3"


def test_replicas_count_from_one() -> None:
    with pytest.raises(StackError, match="from 1"):
        replica_name("dispatcher", 0)
