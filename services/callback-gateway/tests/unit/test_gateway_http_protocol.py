"""One write per answer: the transport joins a response's writes, never reorders or loses one."""

from __future__ import annotations

import asyncio
from typing import Any

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
