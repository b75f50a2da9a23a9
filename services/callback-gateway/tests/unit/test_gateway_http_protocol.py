"""One write per answer: the transport joins a response's writes, never reorders or loses one."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState
from webhook_tasks_gateway.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """A transport that records what is written to it, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


async def test_the_writes_of_one_turn_leave_as_one_in_order_when_it_ends() -> None:
    wrapped = RecordingTransport()
    transport = CoalescingTransport(wrapped)

    transport.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
    transport.write(b"{}")
    assert wrapped.writes == []
    assert transport.get_write_buffer_size() == 27
    await asyncio.sleep(0)

    assert wrapped.writes == [b"HTTP/1.1 202 Accepted\r\n\r\n{}"]


async def test_each_turn_s_writes_leave_in_order_and_none_is_lost() -> None:
    wrapped = RecordingTransport()
    transport = CoalescingTransport(wrapped)

    transport.writelines([b"1", bytearray(b"2"), memoryview(b"3")])
    await asyncio.sleep(0)
    transport.write(b"4")
    await asyncio.sleep(0)
    transport.write(b"5")
    transport.write(b"")
    await asyncio.sleep(0)
    await asyncio.sleep(0)

    assert wrapped.writes == [b"123", b"4", b"5"]


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    closed, aborted = RecordingTransport(), RecordingTransport()
    for wrapped, end in ((closed, "close"), (aborted, "abort")):
        transport = CoalescingTransport(wrapped)
        transport.write(b"held")
        getattr(transport, end)()
        await asyncio.sleep(0)

    assert closed.writes == [b"held"]
    assert closed.closed
    assert aborted.writes == []
    assert aborted.aborted


async def test_nothing_is_written_once_the_connection_is_gone() -> None:
    wrapped = RecordingTransport()
    transport = CoalescingTransport(wrapped)

    transport.write(b"late")
    wrapped.closed = True  # the peer went away before the turn ended
    await asyncio.sleep(0)

    assert wrapped.writes == []
    assert transport.get_write_buffer_size() == 0


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await receive()
    body = b'{"status":"accepted"}'
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_uvicorn_answers_each_request_in_one_write() -> None:
    config = uvicorn.Config(app, http=CoalescingHttpToolsProtocol, log_config=None)
    protocol = CoalescingHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    wrapped = RecordingTransport()
    protocol.connection_made(wrapped)
    request = b"POST /v1/callbacks/a/b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"

    for _ in range(2):  # keep-alive: the second answer is one write too
        protocol.data_received(request)
        while len(protocol.tasks):
            await asyncio.gather(*protocol.tasks)
        await asyncio.sleep(0)

    assert len(wrapped.writes) == 2
    for answer in wrapped.writes:
        assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
        assert answer.endswith(b'\r\n\r\n{"status":"accepted"}')
    protocol.connection_lost(None)


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    answer = b"%d" % len(body)
    headers = [(b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


def connection(
    app: Any = None, *, max_head_bytes: int = 64 * 1024, read_timeout_seconds: float = 30.0
) -> tuple[CoalescingHttpToolsProtocol, RecordingTransport]:
    """Return a connection to `app` (echo_length by default) over a transport that records."""
    protocol_class = CoalescingHttpToolsProtocol.configured(
        max_head_bytes=max_head_bytes, read_timeout_seconds=read_timeout_seconds
    )
    config = uvicorn.Config(app or echo_length, http=protocol_class, log_config=None)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def answered(protocol: CoalescingHttpToolsProtocol) -> None:
    await asyncio.sleep(0)
    while protocol.tasks:
        await asyncio.gather(*protocol.tasks)
    await asyncio.sleep(0)


H2C_OFFER = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAEAAEAA\r\n"


@pytest.mark.parametrize(
    "reads",
    [
        [b"POST /cb HTTP/1.1\r\nhost: x\r\n" + H2C_OFFER + b"content-length: 2\r\n\r\n{}"],
        [
            b"POST /cb HTTP/1.1\r\nhost: x\r\n" + H2C_OFFER + b"content-length: 2\r\n\r\n",
            b"{}",
        ],
        [
            b"POST /cb HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
            b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ],
        # A read ending inside the offer: before its line's CRLF ends, after it, in its name.
        [
            b"POST /cb HTTP/1.1\r\nconnection: upgrade\r\nhost: x\r",
            b"\nUpgrade: h2c\r\ncontent-length: 2\r\n\r\n{}",
        ],
        [
            b"POST /cb HTTP/1.1\r\nconnection: upgrade\r\nhost: x\r\n",
            b"Upgrade: h2c\r\ncontent-length: 2\r\n\r\n{}",
        ],
        [
            b"POST /cb HTTP/1.1\r\nconnection: upgrade\r\nhost: x\r\nUpg",
            b"rade: h2c\r\ncontent-length: 2\r\n\r\n{}",
        ],
    ],
)
async def test_an_offer_to_upgrade_is_ignored_and_the_body_reaches_the_app(
    reads: list[bytes],
) -> None:
    protocol, transport = connection()

    for data in reads:
        protocol.data_received(data)
    await answered(protocol)

    (answer,) = transport.writes
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert answer.endswith(b"\r\n\r\n2")


async def test_a_head_that_keeps_growing_past_the_limit_is_refused_with_431() -> None:
    protocol, transport = connection(max_head_bytes=4096)

    protocol.data_received(b"POST /cb HTTP/1.1\r\nhost: x\r\nx-big: ")
    for _ in range(3):
        protocol.data_received(b"a" * 2000)
    await answered(protocol)

    (answer,) = transport.writes
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"content-type: application/problem+json\r\nconnection: close\r\n" in answer
    assert b"exceed 4096 bytes" in answer
    assert transport.closed
    protocol.connection_lost(None)


async def test_many_requests_in_one_read_are_no_long_head() -> None:
    protocol, transport = connection(max_head_bytes=4096)
    request = b"POST /cb HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"

    protocol.data_received(request * 200)  # 10 KiB, pipelined, the last head split below
    protocol.data_received(request[:20])
    protocol.data_received(request[20:])
    for _ in range(201):
        await answered(protocol)

    assert len(transport.writes) == 201
    assert not transport.closed


@pytest.mark.parametrize(
    "sent",
    [
        b"POST /cb HTTP/1.1\r\nhost: x\r\ncontent-",  # the head never ends
        b"POST /cb HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{}",  # nor the body
    ],
)
async def test_a_request_that_does_not_arrive_whole_in_time_gets_408_and_is_closed(
    sent: bytes,
) -> None:
    protocol, transport = connection(read_timeout_seconds=0.05)

    protocol.data_received(sent)
    await asyncio.sleep(0.1)
    protocol.connection_lost(None)  # as the event loop reports the close
    await answered(protocol)

    (answer,) = transport.writes
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"within 0.05 s" in answer
    assert transport.closed


async def test_a_request_that_arrived_whole_may_take_its_time() -> None:
    protocol, transport = connection(read_timeout_seconds=0.05)

    protocol.data_received(b"POST /cb HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
    await answered(protocol)
    await asyncio.sleep(0.1)

    (answer,) = transport.writes
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert not transport.closed
    protocol.connection_lost(None)


async def test_what_the_parser_refuses_is_answered_as_a_problem() -> None:
    protocol, transport = connection()

    protocol.data_received(b"POST /cb HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}")

    (answer,) = transport.writes
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"application/problem+json" in answer
    assert b'"type":"urn:webhook-tasks:problem:invalid-http-request"' in answer
    assert transport.closed


@pytest.mark.parametrize(
    "reads",
    [
        [b"POST /cb HTTP/1.1\r\ncontent-length: 0\r\n", b"\r\n"],
        [b"POST /cb HTTP/1.1\r\ncontent-length: 0\r\n\r", b"\n"],
        [b"POST /cb HTTP/1.1\r\ncontent-length: 0\r\n\r\n"],
    ],
)
async def test_a_head_ending_in_a_read_of_its_own_is_answered_at_once(reads: list[bytes]) -> None:
    protocol, transport = connection()

    for data in reads:
        protocol.data_received(data)
    await answered(protocol)

    (answer,) = transport.writes
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")


async def test_a_long_head_in_one_read_is_refused_too() -> None:
    protocol, transport = connection(max_head_bytes=4096)

    protocol.data_received(b"POST /cb HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8000)

    (answer,) = transport.writes
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert transport.closed


async def slow_then_echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    await echo_length(scope, receive, send)


def statuses(transport: RecordingTransport) -> list[bytes]:
    """Return the status codes of the answers written, in order (one write may hold several)."""
    return re.findall(rb"HTTP/1.1 (\d{3}) ", b"".join(transport.writes))


async def test_a_request_waiting_behind_a_slow_answer_is_not_timed_meanwhile() -> None:
    protocol, transport = connection(slow_then_echo, max_head_bytes=4096, read_timeout_seconds=0.4)
    slow = b"POST /slow HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}"

    # The second request, pipelined, is read in part while the first is answered (1 s),
    # and its time (0.4 s) starts once that answer is written: its rest comes at 0.9 s.
    protocol.data_received(slow + b"POST /cb HTTP/1.1\r\ncontent-len")
    await asyncio.sleep(0.9)
    protocol.data_received(b"gth: 3\r\n\r\n{ }")
    for _ in range(3):
        await answered(protocol)

    assert statuses(transport) == [b"202", b"202"]
    assert b"".join(transport.writes).endswith(b"3")


async def test_a_later_requests_refusal_waits_for_the_earlier_answer() -> None:
    protocol, transport = connection(slow_then_echo, max_head_bytes=4096)

    protocol.data_received(b"POST /slow HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}")
    protocol.data_received(b"POST /cb HTTP/1.1\r\nx-big: ")
    protocol.data_received(b"a" * 5000)
    for _ in range(3):
        await answered(protocol)

    assert statuses(transport) == [b"202", b"431"]
    assert transport.closed
