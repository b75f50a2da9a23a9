"""HTTP calls to external services: the initiating request and its answer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx
from pydantic import SecretStr, ValidationError
from webhook_tasks_contracts import Masker, WebhookAck, credential_masker
from webhook_tasks_runtime.timeouts import within

from .guard import TransientResolutionError, UrlGuard, UrlRefusedError, guarded_resolver
from .signing import ambiguous_path, resolved_path, signature_headers

MAX_STORED_BODY_CHARS = 2000
"""Response bodies are kept for diagnosis only; a page of text is enough and bounds the row."""

_E = TypeVar("_E", bound=BaseException)

Outcome = Literal["accepted", "rejected", "unreachable", "refused", "failed", "busy"]
"""`refused`: never sent (the guard, or a request that cannot be built); `failed`: the
dispatcher itself failed while sending or recording the attempt; `busy`: not sent, as the
host already had all the requests it may have in flight (no attempt: the host did nothing)."""


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What happened to one request to an external service."""

    outcome: Outcome
    latency_ms: float
    status_code: int | None = None
    ack: WebhookAck | None = None
    response_body: str | None = None
    error: str | None = None
    retry_after: str | None = None
    body: bytes = b""
    """The answer's bytes, up to the size cap (a sync task's result is read from them)."""
    truncated: bool = False
    undecoded: str | None = None
    """The answer's Content-Encoding, when the dispatcher could not decode it (br, zstd)."""
    timed_out: bool = False
    unsendable: bool = False
    """Refused because the request itself cannot be built (its URL or headers), not its host."""

    @property
    def reason(self) -> str:
        """Return a one-line explanation fit for the user's comment (never a secret)."""
        if self.outcome == "accepted":
            return "accepted"
        if self.outcome == "refused" and self.unsendable:
            return f"the request could not be sent: {self.error}"
        if self.outcome == "refused":
            return f"the webhook URL was refused: {self.error}"
        if self.outcome == "failed":
            return f"the dispatcher could not send the request ({self.error})"
        if self.status_code is not None and 300 <= self.status_code < 400:
            # Not followed: a redirect could lead past the SSRF guard's check of the URL.
            return (
                f"the external service answered HTTP {self.status_code}, a redirect, which is "
                "not followed: set webhookUrl to the URL it redirects to"
            )
        if self.status_code is not None:
            return f"the external service answered HTTP {self.status_code}"
        if self.timed_out:
            return f"the external service did not answer in time ({self.error})"
        return f"the external service could not be reached ({self.error})"


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """One request to send: where, what, and how to authenticate and sign it."""

    url: str
    body: bytes
    webhook_id: str
    auth: SecretStr | None = None
    signing_key: bytes | None = None
    timeout_seconds: float | None = None
    """Overrides the client's timeout (a sync task waits up to its own timeout)."""
    trace_headers: Mapping[str, str] = field(default_factory=dict)
    """`traceparent` (and `tracestate`) naming the attempt's span, when tracing is on."""


def create_transport(
    *,
    guard: UrlGuard,
    max_connections: int,
    max_connections_per_host: int,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncBaseTransport:
    """Return the process's one HTTP transport (aiohttp's, measured fastest) behind `guard`."""
    from httpx_aiohttp import AiohttpTransport

    # The same certificate store the transport would use on its own.
    verify = ssl_context or httpx.create_ssl_context(trust_env=False)

    def session() -> aiohttp.ClientSession:
        # Built on first use, inside the running loop; the guard resolves every host.
        connector = aiohttp.TCPConnector(
            ssl=verify,
            limit=max_connections,
            limit_per_host=max_connections_per_host,
            resolver=guarded_resolver(guard),
        )
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return AiohttpTransport(limits=limits, trust_env=False, client=session)


@functools.lru_cache(maxsize=4096)
def origin_of(url: str) -> str:
    """Return `host:port` of `url` (the scheme's port if none is given): one server's address."""
    parts = urlsplit(url)
    host = (parts.hostname or "unknown").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HostSlots:
    """At most `per_host` requests in flight to each host; the wait for one is bounded."""

    def __init__(self, per_host: int) -> None:
        self._per_host = per_host
        # Each host's semaphore and how many hold or wait for it; idle hosts are forgotten.
        self._hosts: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def slot(self, host: str, *, wait: float) -> _HostSlot:
        """Hold a slot for `host`, waiting up to `wait` s; entered, it gives False if none came."""
        return _HostSlot(self, host, wait)

    def _join(self, host: str) -> asyncio.Semaphore:
        semaphore, users = self._hosts.get(host, (None, 0))
        if semaphore is None:
            semaphore = asyncio.Semaphore(self._per_host)
        self._hosts[host] = (semaphore, users + 1)
        return semaphore

    def _leave(self, host: str) -> None:
        semaphore, users = self._hosts[host]
        if users == 1:
            del self._hosts[host]
        else:
            self._hosts[host] = (semaphore, users - 1)


class _HostSlot:
    # A class, not @asynccontextmanager: its generator cost about 2 µs more on every request.
    __slots__ = ("_acquired", "_host", "_semaphore", "_slots", "_wait")

    def __init__(self, slots: HostSlots, host: str, wait: float) -> None:
        self._slots = slots
        self._host = host
        self._wait = wait
        self._acquired = False

    async def __aenter__(self) -> bool:
        self._semaphore = semaphore = self._slots._join(self._host)
        try:
            if not semaphore.locked():
                # A free slot is taken at once: no wait to bound. asyncio.timeout on every
                # request cost 11% of the client's throughput (its timer and context manager).
                self._acquired = await semaphore.acquire()
            else:
                with contextlib.suppress(TimeoutError):
                    self._acquired = await within(self._wait, semaphore.acquire())
        except BaseException:
            self._slots._leave(self._host)
            raise
        return self._acquired

    async def __aexit__(self, *exc_info: object) -> None:
        if self._acquired:
            self._semaphore.release()
        self._slots._leave(self._host)


class WebhookClient:
    """Send the product summary's request to an external service, through the SSRF guard.

    Requests go straight to an httpx transport: httpx's client layers (redirects, auth,
    cookies, event hooks) do nothing we need and cost more CPU than the request itself.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        guard: UrlGuard,
        max_response_bytes: int = 64 * 1024,
        timeout_seconds: float = 30.0,
        max_requests_per_host: int | None = None,
    ) -> None:
        self._transport = transport
        self._guard = guard
        self._max_response_bytes = max_response_bytes
        self._timeout_seconds = timeout_seconds
        self._hosts = HostSlots(max_requests_per_host) if max_requests_per_host else None

    async def send(self, request: OutboundRequest, *, now: datetime) -> DeliveryResult:
        """POST the request; classify the answer. Never raises for what the far end does."""
        if self._hosts is None:
            return await self._send(request, now=now)
        # Waiting behind the host's other requests is not the host's time to answer: it is
        # neither timed as the request nor, when it runs long, a failure of the host.
        async with self._hosts.slot(origin_of(request.url), wait=self._timeout_seconds) as free:
            if not free:
                return DeliveryResult(
                    "busy", 0.0, error="every request this host may have is in flight"
                )
            return await self._send(request, now=now)

    async def _send(self, request: OutboundRequest, *, now: datetime) -> DeliveryResult:
        started = time.perf_counter()
        timeout = request.timeout_seconds or self._timeout_seconds
        try:
            # Resolving counts against the timeout: a resolver that hangs holds no claim for ever.
            await self._guard.check(request.url, lookup_within=timeout)
        except UrlRefusedError as refusal:
            return DeliveryResult("refused", _elapsed_ms(started), error=str(refusal))
        except TransientResolutionError as failure:
            return DeliveryResult("unreachable", _elapsed_ms(started), error=str(failure))
        except TimeoutError:
            return DeliveryResult(
                "unreachable",
                _elapsed_ms(started),
                error=f"the host was not resolved within {timeout:g}s",
                timed_out=True,
            )
        remaining = max(timeout - (time.perf_counter() - started), 0.001)
        headers = {
            "content-type": "application/json",
            "user-agent": "webhook-tasks/0.1",
            "accept-encoding": "identity",
        }
        if request.signing_key is not None:
            headers |= signature_headers(
                request.signing_key,
                webhook_id=request.webhook_id,
                timestamp=now,
                body=request.body,
            )
        else:
            headers["webhook-id"] = request.webhook_id
        headers |= request.trace_headers
        mask = None
        if request.auth is not None:
            headers["authorization"] = request.auth.get_secret_value()
            mask = credential_masker(request.auth)
        try:
            outgoing = httpx.Request(
                "POST",
                _parsed_url(request.url),
                content=request.body,
                headers=headers,
                extensions={"timeout": httpx.Timeout(timeout).as_dict()},
            )
            # The total bound also stops a server that drips its answer byte by byte.
            response, raw, truncated, undecoded = await within(remaining, self._exchange(outgoing))
        except (httpx.InvalidURL, UnicodeError, ValueError) as error:
            # The same request would fail the same way on every attempt: it is never sent.
            return DeliveryResult(
                "refused",
                _elapsed_ms(started),
                error=_describe(error, mask),
                unsendable=True,
            )
        except TimeoutError:
            return DeliveryResult(
                "unreachable",
                _elapsed_ms(started),
                error=f"no answer within {timeout:g}s",
                timed_out=True,
            )
        except aiohttp.ClientResponseError as error:
            # A status line, header or chunk that no HTTP parser takes: the host answered
            # nothing usable, as if it had not answered (retried, and counted by its breaker).
            return DeliveryResult(
                "unreachable", _elapsed_ms(started), error=_invalid_http(error, mask)
            )
        except httpx.HTTPError as error:
            refused = _in_chain(error, UrlRefusedError)
            if refused is not None:
                return DeliveryResult("refused", _elapsed_ms(started), error=str(refused))
            # Not the exception type: the transport reports a refused connect as a timeout.
            closed = _in_chain(error, ConnectionRefusedError)
            return DeliveryResult(
                "unreachable",
                _elapsed_ms(started),
                error=f"connection refused ({closed})"
                if closed is not None
                else _describe(error, mask),
                timed_out=closed is None and _in_chain(error, TimeoutError) is not None,
            )
        latency = _elapsed_ms(started)
        if mask is not None:
            # A service that echoes the request must not put webhookAuth in our records, nor,
            # through a sync answer, in events and comments. Masked within JSON strings, the
            # answer stays JSON; bytes that are not UTF-8 are kept as they came.
            raw = mask(raw.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        # PostgreSQL text cannot hold NUL; a binary answer is still worth a look.
        text = raw.decode(errors="replace").replace("\x00", "\ufffd")[:MAX_STORED_BODY_CHARS]
        if not response.is_success:
            return DeliveryResult(
                "rejected",
                latency,
                response.status_code,
                response_body=text,
                retry_after=response.headers.get("retry-after"),
                truncated=truncated,
                undecoded=undecoded,
            )
        return DeliveryResult(
            "accepted",
            latency,
            response.status_code,
            ack=None if truncated or undecoded else _parse_ack(raw),
            response_body=text,
            body=raw,
            truncated=truncated,
            undecoded=undecoded,
        )

    async def _exchange(
        self, request: httpx.Request
    ) -> tuple[httpx.Response, bytes, bool, str | None]:
        response = await self._transport.handle_async_request(request)
        # A transport that read the answer itself (httpx's MockTransport) decoded it too.
        decoded = response.is_stream_consumed
        try:
            raw, truncated = await self._read_capped(response)
        finally:
            await response.aclose()
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if decoded or encoding in ("", "identity"):
            return response, raw, truncated, None
        # Asked for none, a proxy may still compress: inflated up to the cap, no further.
        return response, *_inflated(raw, truncated, encoding, self._max_response_bytes)

    async def _read_capped(self, response: httpx.Response) -> tuple[bytes, bool]:
        if response.is_stream_consumed:
            # A transport that read the answer itself (httpx's MockTransport) left it whole.
            whole = response.content
            return whole[: self._max_response_bytes], len(whole) > self._max_response_bytes
        if not isinstance(response.stream, httpx.AsyncByteStream):
            raise TypeError("the transport gave a response without an async stream")
        chunks: list[bytes] = []
        size = 0
        # Raw, as sent: the cap must bound the bytes held, and a small compressed answer
        # would inflate to gigabytes before any cap saw it (the transport leaves it as sent).
        # Straight from the transport's stream: aiter_raw's chunking and bookkeeping added
        # a generator per answer, for nothing we read.
        async for chunk in response.stream:
            chunks.append(chunk)
            size += len(chunk)
            if size > self._max_response_bytes:
                # Stop reading rather than buffer a huge answer; the connection is dropped.
                return b"".join(chunks)[: self._max_response_bytes], True
        return b"".join(chunks), False


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> httpx.URL:
    # Parsing a URL is a sizeable share of a request's CPU; a service's URL rarely changes.
    parsed = httpx.URL(url)
    path = urlsplit(url).path
    if ambiguous_path(path):
        # Its signing secret could be another path's, wherever the server takes it to.
        raise httpx.InvalidURL(
            "the path has '.' or '..' beside an encoded slash, which servers resolve differently"
        )
    resolved = resolved_path(path)
    # Sent to the path its signing key was chosen for: httpx applies "..", but leaves "%2e%2e"
    # for the server, which may or may not apply it (RFC 3986 says the two are the same).
    return parsed if resolved == (path or "/") else parsed.copy_with(path=resolved)


_INFLATABLE = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}
"""zlib's window bits for each Content-Encoding it reads (deflate: zlib-wrapped, as HTTP says)."""


def _inflated(
    raw: bytes, truncated: bool, encoding: str, cap: int
) -> tuple[bytes, bool, str | None]:
    """Return the answer decoded, at most `cap` bytes, whether more was left, and what was not."""
    window = _INFLATABLE.get(encoding)
    attempts = [window] if encoding != "deflate" else [window, -zlib.MAX_WBITS]  # raw deflate too
    for bits in attempts:
        if bits is None:
            break
        decoder = zlib.decompressobj(bits)
        try:
            body = decoder.decompress(raw, cap)
        except zlib.error:
            continue
        # Output stopped at the cap with input left over: a larger answer, or a bomb.
        return body, truncated or bool(decoder.unconsumed_tail), None
    return raw, truncated, encoding


def _parse_ack(raw: bytes) -> WebhookAck | None:
    if not raw.strip():
        return None
    try:
        return WebhookAck.model_validate_json(raw)
    except ValidationError:
        return None


def _in_chain(error: BaseException, kind: type[_E]) -> _E | None:
    # The transport wraps what really happened (a guard refusal, a timeout) twice over.
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(error: Exception, mask: Masker | None) -> str:
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    if mask is not None:
        # Defence in depth: no transport error should echo a header, but never risk it.
        text = mask(text)
    return text[:500]


def _invalid_http(error: aiohttp.ClientResponseError, mask: Masker | None) -> str:
    # aiohttp's message goes on to quote the offending bytes, which may be anything at all
    # (its pure-Python parser quotes them in its first line: "Bad status line 'Bearer ...'").
    what = re.split(r"""[\n'"]|: b'""", error.message, maxsplit=1)[0].rstrip(": ")
    if mask is not None:
        what = mask(what)
    return f"the answer was not valid HTTP ({what[:200] or 'unreadable'})"


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
