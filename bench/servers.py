"""Serve the benchmark's own HTTP endpoints: the no-op ceiling and the pretend external service."""

# `noop` is the gateway's ceiling: a raw ASGI app answering 202 to any POST, served by
# uvicorn with the gateway's settings. `gateway-in-memory` is the gateway's app, settings
# and tokens from the environment as the gateway reads them, over a publisher that takes
# every message at once: the gateway without its Kafka write, to tell what that write costs.
# `sink` plays the external service: it acknowledges at once and, depending on the path,
# calls back at once, calls back after a delay, or holds the request as a synchronous
# service would. It records when each request arrived
# and when each callback was accepted, and hands the records over on `GET /records`.
# `dispatcher-answered-in-process` is not a server: it is the dispatcher, settings from the
# environment as the dispatcher reads them, with every request answered in its own process
# (httpx's MockTransport, 202 and an acknowledgement) instead of over a socket: what the
# dispatcher costs besides its HTTP exchange, the ceiling no transport could lift it past.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import httpx
import uvicorn
from webhook_tasks_dispatcher.main import run as run_dispatcher
from webhook_tasks_gateway.app import create_app
from webhook_tasks_gateway.http_protocol import CoalescingHttpToolsProtocol
from webhook_tasks_gateway.settings import GatewaySettings
from webhook_tasks_runtime.kafka import OutgoingMessage
from webhook_tasks_runtime.worker import settle_heap

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

ACCEPTED = json.dumps({"status": "accepted", "estimatedCompletion": "0s"}).encode()
JSON_HEADERS = [(b"content-type", b"application/json")]


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(
    receive: Receive,
    send: Send,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _nothing() -> None:
    return None


async def noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every request with a small 202, having read its body: the gateway's ceiling."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, _nothing, _nothing)
        return
    await _read_body(receive)
    await _answer(send, 202, b'{"status":"accepted"}')


class _TakesEverything:
    """A publisher that has every message at once, as if Kafka acknowledged it in no time."""

    async def publish(self, message: OutgoingMessage) -> None:
        """Return at once."""
        return None


def gateway_in_memory() -> App:
    """Return the gateway's app as the gateway builds it, with no Kafka behind it."""
    settings = GatewaySettings()
    return create_app(settings, _TakesEverything(), settings.callback_tokens())


class Sink:
    """The pretend external service (an ASGI app) and what it recorded."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.called_back: dict[str, float] = {}
        self.callback_failures = 0
        self._http: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def _startup(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), trust_env=False
        )

    async def _shutdown(self) -> None:
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route: /ack, /callback[?delay=S], /sync?delay=S, GET /records, GET /healthz."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self._startup, self._shutdown)
            return
        path = scope["path"]
        if scope["method"] == "GET":
            if path == "/records":
                await _answer(send, 200, self._take_records())
            else:
                await _answer(send, 200, b'{"status":"ok"}')
            return
        arrived = time.time()
        body = await _read_body(receive)
        query = parse_qs(scope.get("query_string", b"").decode())
        delay = float(query.get("delay", ["0"])[0])
        if path == "/ack":
            await _answer(send, 200, ACCEPTED)
            return
        job: dict[str, Any] = json.loads(body)
        self.received[str(job.get("taskId"))] = arrived
        if path == "/sync":
            # A synchronous service: the caller waits for the whole job.
            await asyncio.sleep(delay)
            await _answer(send, 200, b'{"status":"success","resultUrl":"http://127.0.0.1/r"}')
            return
        task = asyncio.create_task(self._call_back(job, delay))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await _answer(send, 200, ACCEPTED)

    async def _call_back(self, job: dict[str, Any], delay: float) -> None:
        assert self._http is not None
        if delay:
            await asyncio.sleep(delay)
        correlation_id = str(job["correlationId"])
        body = {
            "correlationId": correlation_id,
            "status": "success",
            "resultUrl": f"http://127.0.0.1/results/{correlation_id}.mp4",
            "metadata": {"title": "Benchmark"},
        }
        for _attempt in range(5):
            try:
                async with self._http.post(job["callbackUrl"], json=body) as response:
                    await response.read()
                    if response.status < 300:
                        self.called_back[correlation_id] = time.time()
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        self.callback_failures += 1

    def _take_records(self) -> bytes:
        records = {
            "received": self.received,
            "called_back": self.called_back,
            "callback_failures": self.callback_failures,
        }
        self.received, self.called_back, self.callback_failures = {}, {}, 0
        return json.dumps(records).encode()


def serve(app: App, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` with the callback gateway's uvicorn settings."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        http=CoalescingHttpToolsProtocol,
        access_log=False,
        log_config=None,
        server_header=False,
    )
    # Like the gateway: its heap settled, uvicorn's serve() on uvloop where it is installed
    # (as the services run), else on asyncio's own loop; so the ceiling is the same server
    # as the figure.
    settle_heap()
    try:
        import uvloop
    except ImportError:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(uvicorn.Server(config).serve())
        return
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(uvicorn.Server(config).serve())


def _acknowledged(request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, content=ACCEPTED, headers={"content-type": "application/json"})


def main() -> None:
    """Run one: `python -m bench.servers noop|gateway-in-memory|sink|dispatcher-... --port N`."""
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument(
        "server", choices=["noop", "gateway-in-memory", "sink", "dispatcher-answered-in-process"]
    )
    parser.add_argument("--port", type=int, required=True, help="unused by the dispatcher")
    args = parser.parse_args()
    if args.server == "dispatcher-answered-in-process":
        # The dispatcher as it runs deployed, its requests answered in this process.
        run_dispatcher(transport=httpx.MockTransport(_acknowledged))
        return
    apps: dict[str, Callable[[], App]] = {
        "noop": lambda: noop_app,
        "gateway-in-memory": gateway_in_memory,
        "sink": Sink,
    }
    serve(apps[args.server](), args.port)


if __name__ == "__main__":
    main()
