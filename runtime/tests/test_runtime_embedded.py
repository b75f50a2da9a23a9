"""Ports for embedded servers and test servers are never the ones outgoing connections take."""

from __future__ import annotations

import random
import socket

import pytest
from webhook_tasks_runtime import embedded


def _first_ephemeral_port() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        return int(ranges.read().split()[0])


def test_a_free_port_lies_below_the_ports_outgoing_connections_are_given() -> None:
    ports = [embedded.free_port() for _ in range(50)]

    assert all(1024 <= port < _first_ephemeral_port() for port in ports)


def test_a_free_port_is_handed_out_once_and_can_be_bound() -> None:
    ports = [embedded.free_port() for _ in range(50)]

    assert len(set(ports)) == len(ports)
    with socket.socket() as server:
        server.bind(("127.0.0.1", ports[0]))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        # Of this test alone: other tests in the process were handed out ports already.
        monkeypatch.setattr(embedded, "_handed_out", set())
        free = _a_port_nobody_listens_on()
        tries = iter([taken, taken, free])
        monkeypatch.setattr(random, "randrange", lambda *_: next(tries))

        assert embedded.free_port() == free


def _a_port_nobody_listens_on() -> int:
    for port in range(23456, 24456):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 23456 and 24456")
