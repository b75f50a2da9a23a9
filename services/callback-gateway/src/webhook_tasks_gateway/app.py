"""The gateway's HTTP app: the callback route, health probes, and problem+json for every refusal."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Lifespan, Receive, Scope, Send
from webhook_tasks_contracts import CallbackReceived, CallbackTokens
from webhook_tasks_runtime.kafka import message_for
from webhook_tasks_runtime.logging import correlation_context
from webhook_tasks_runtime.timeouts import SharedTimeLimit

from .admission import BodyBudget, Held
from .callbacks import (
    callback_event,
    delivery_event_id,
    delivery_id,
    header_value,
    parse_callback,
    read_body,
    require_identity_encoding,
    require_json,
)
from .metrics import ACCEPTED, CALLBACKS, PUBLISH_SECONDS
from .openapi import CALLBACK_PATH, OPENAPI_PATH, build_openapi
from .problems import (
    BodyTooLargeError,
    CallbackNotStoredError,
    InvalidTokenError,
    ProblemError,
    RateLimitedError,
    problem_response,
)
from .publishing import AlwaysReady, CallbackPublisher, ReadinessProbe
from .ratelimit import TokenBuckets
from .settings import GatewaySettings
from .signatures import SignatureVerifier

logger = logging.getLogger(__name__)

CALLBACK_ROUTE = CALLBACK_PATH
_SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_MAX_LOGGED_ID = 200
_MASKED_INLINE_BYTES = 1024
"""Larger callbacks of a task sent with a credential are masked in a worker thread."""
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def create_app(
    settings: GatewaySettings,
    publisher: CallbackPublisher,
    tokens: CallbackTokens,
    *,
    readiness: ReadinessProbe | None = None,
    lifespan: Lifespan[Starlette] | None = None,
    signatures: SignatureVerifier | None = None,
) -> Starlette:
    """Build the gateway app; `readiness` defaults to the publisher when it can answer."""
    if readiness is None:
        readiness = publisher if isinstance(publisher, ReadinessProbe) else AlwaysReady()
    if signatures is None:
        signatures = settings.signature_verifier()
    callbacks = _CallbackEndpoint(settings, publisher, tokens, signatures)
    probes = _Probes(readiness)
    document = _StaticJSON(build_openapi())
    callback_route = Route(CALLBACK_ROUTE, callbacks, methods=["POST"])
    return _GatewayApp(
        callbacks,
        callback_route,
        routes=[
            callback_route,
            Route("/healthz", probes.healthz, methods=["GET"]),
            Route("/readyz", probes.readyz, methods=["GET"]),
            Route(OPENAPI_PATH, document.serve, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                _ProblemCORSMiddleware,
                allow_origins=settings.gateway_cors_allow_origins,
                allow_methods=["POST"],
                allow_headers=_SIGNATURE_HEADERS,
                # Else a browser hides, on a 429 or 503, when the callback may be sent again.
                expose_headers=["Retry-After"],
            )
        ],
        exception_handlers={HTTPException: _http_problem, 500: _server_error},
        lifespan=lifespan,
    )


class _GatewayApp(Starlette):
    """Starlette, with callbacks from servers taken straight to their endpoint."""

    def __init__(self, callbacks: _CallbackEndpoint, callback_route: Route, **options: Any) -> None:
        super().__init__(**options)
        # A redirect to the path without its trailing slash would echo the callback token in
        # Location; such a path is a plain 404, which never quotes it.
        self.router.redirect_slashes = False
        self._callbacks = callbacks
        self._callback_path = callback_route.path_regex

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a callback POST without an Origin header directly; anything else via Starlette."""
        # The middleware stack and router cost more CPU per callback than the callback's own
        # work. A POST without Origin passes the CORS middleware untouched, and no other
        # middleware acts on it, so skipping them changes no answer.
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            match = self._callback_path.match(scope["path"])
            if match is not None and header_value(scope["headers"], b"origin") is None:
                scope["app"] = self
                scope["path_params"] = match.groupdict()
                try:
                    response = await self._callbacks.respond(scope, receive)
                except Exception as error:
                    # As Starlette's ServerErrorMiddleware: a 500 problem, then raise to be logged.
                    await (await _server_error(Request(scope), error))(scope, receive, send)
                    raise
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _Accepted:
    """The 202 answer to a callback: its status and correlation id, as compact JSON."""

    __slots__ = ("_body",)

    def __init__(self, correlation_id: str) -> None:
        # Only the id needs encoding: a whole dict through json.dumps cost six times as much.
        self._body = (
            b'{"status":"accepted","correlationId":%s}' % json.dumps(correlation_id).encode()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the answer."""
        headers = [(b"content-length", b"%d" % len(self._body)), _JSON_CONTENT_TYPE]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": self._body})


class _CallbackEndpoint:
    """The callback route, an ASGI app: verify, validate, publish, answer."""

    def __init__(
        self,
        settings: GatewaySettings,
        publisher: CallbackPublisher,
        tokens: CallbackTokens,
        signatures: SignatureVerifier,
    ) -> None:
        self._publisher = publisher
        self._tokens = tokens
        self._signatures = signatures
        self._topic = settings.topics.callback_received
        self._max_body_bytes = settings.gateway_max_body_bytes
        self._max_event_bytes = settings.max_event_bytes
        # One limit for every publish, kept by one timer: a timer of its own per callback
        # cost about 2% of the gateway's CPU. A publish may overrun it by up to 0.1 s.
        self._publish_limit = SharedTimeLimit(settings.gateway_publish_timeout_seconds)
        self._retry_after = settings.gateway_retry_after_seconds
        self._in_flight = BodyBudget(
            settings.gateway_max_bytes_in_flight,
            body_limit=self._max_body_bytes,
            retry_after_seconds=self._retry_after,
        )
        self._per_client = _buckets(
            settings.gateway_rate_limit_per_client,
            settings.gateway_rate_limit_per_client_burst,
            settings.gateway_rate_limit_max_tracked,
        )
        self._per_correlation_id = _buckets(
            settings.gateway_rate_limit_per_correlation_id,
            settings.gateway_rate_limit_per_correlation_id_burst,
            settings.gateway_rate_limit_max_tracked,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one callback routed by Starlette."""
        response = await self.respond(scope, receive)
        await response(scope, receive, send)

    async def respond(self, scope: Scope, receive: Receive) -> ASGIApp:
        """Verify, validate and publish one callback; return 202 once Kafka has it."""
        params = scope["path_params"]
        correlation_id: str = params["correlation_id"]
        held = self._in_flight.holder(correlation_id)
        with correlation_context(_loggable(correlation_id)):
            try:
                event = await self._event_from(
                    scope, receive, correlation_id, params["token"], held
                )
                await self._publish(event)
            except ProblemError as problem:
                CALLBACKS.labels(problem.slug).inc()
                level = logging.WARNING if problem.status >= 500 else logging.INFO
                logger.log(
                    level,
                    "callback refused",
                    extra={
                        "http_status": problem.status,
                        "problem": problem.slug,
                        "client": _client_address(scope),
                    },
                )
                response = problem.response()
                if header_value(scope["headers"], b"expect") is not None:
                    # Refused before the body was asked for, the client may never send it;
                    # on a kept-alive connection its next request would be read as that body.
                    response.headers["connection"] = "close"
                return response
            finally:
                held.release()
            ACCEPTED.inc()
            # Kafka now holds the callback with its event id: that is the record. A line per
            # accepted callback at INFO cost ~10% of the gateway's CPU under load; refusals,
            # which leave no other trace, stay at INFO and above. Even the arguments of a
            # DEBUG line that is not written cost a UUID's str per callback.
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "callback accepted",
                    extra={"callback_status": event.status, "event_id": str(event.event_id)},
                )
            return _Accepted(correlation_id)

    async def _event_from(
        self, scope: Scope, receive: Receive, correlation_id: str, token: str, held: Held
    ) -> CallbackReceived:
        """Verify and read one callback, its body's bytes held in `held` as they arrive."""
        headers = scope["headers"]
        if self._per_client is not None:
            _spend(self._per_client, _client_address(scope), "from this client")
        # Cheapest refusal first: a forged URL costs one HMAC and never reads the body.
        verified = self._tokens.verified(correlation_id, token)
        if verified is None:
            raise InvalidTokenError()
        signed = self._signatures.expect(verified.endpoint, Headers(raw=headers))
        require_json(header_value(headers, b"content-type"))
        require_identity_encoding(header_value(headers, b"content-encoding"))
        body = await read_body(
            receive, header_value(headers, b"content-length"), self._max_body_bytes, held.take
        )
        if signed is not None:
            signed.verify(body)
        # Counted once token and signature verify, so no stranger can spend a task's allowance.
        if self._per_correlation_id is not None:
            _spend(self._per_correlation_id, correlation_id, "for this correlation id")
        callback = parse_callback(body, correlation_id)
        delivery = delivery_id(header_value(headers, b"webhook-id"))
        event = callback_event(
            callback, delivery=delivery, event_id=delivery_event_id(correlation_id, delivery, body)
        )
        if verified.echoes is None:
            return event
        # The task was sent with a credential: an external service that echoes it (a request
        # dump in metadata, `?auth=` in a URL) must not put it into Kafka.
        mask = functools.partial(self._tokens.fingerprints.mask_callback, event, verified.echoes)
        # Masking takes long (5-6 s for 1 MiB of base64 or a query string, 36-88 ms for 16 KiB):
        # off the event loop, such a callback holds up none of the others.
        masked = await asyncio.to_thread(mask) if len(body) > _MASKED_INLINE_BYTES else mask()
        if masked is not event:
            logger.warning("the callback echoed the task's webhookAuth; it is masked")
        return masked

    async def _publish(self, event: CallbackReceived) -> None:
        message = message_for(self._topic, event, key=event.correlation_id)
        if len(message.value) > self._max_event_bytes:
            raise BodyTooLargeError(
                f"The callback exceeds {self._max_event_bytes} bytes once recorded."
            )
        started = time.perf_counter()
        try:
            await self._publish_limit.within(self._publisher.publish(message))
        except MessageSizeTooLargeError:
            raise BodyTooLargeError("The callback is larger than Kafka accepts.") from None
        except Exception as error:
            logger.warning(
                "could not publish the callback",
                extra={"error": str(error) or type(error).__name__},
            )
            raise CallbackNotStoredError(self._retry_after) from None
        finally:
            PUBLISH_SECONDS.observe(time.perf_counter() - started)


class _Probes:
    def __init__(self, readiness: ReadinessProbe) -> None:
        self._readiness = readiness

    async def healthz(self, request: Request) -> Response:
        """Answer 200 while the process serves requests."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Answer 200 only while callbacks can be published."""
        if await self._readiness.is_ready():
            return JSONResponse({"status": "ready"})
        return problem_response(503, slug="not-ready", detail="Not connected to Kafka.")


class _StaticJSON:
    def __init__(self, document: object) -> None:
        # Serialised once: the document never changes while the process runs.
        self._body = json.dumps(document, separators=(",", ":")).encode()

    async def serve(self, request: Request) -> Response:
        """Answer with the document."""
        return Response(self._body, media_type="application/json")


class _ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling, refusing a disallowed preflight with problem+json."""

    def preflight_response(self, request_headers: Headers) -> Response:
        """Answer a preflight; refusals become 403 problems."""
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        reason = bytes(response.body).decode()
        return problem_response(
            403,
            slug="cors-preflight-refused",
            title="CORS preflight refused",
            detail=f"{reason}. Only POST from configured origins is allowed.",
            headers=headers,
        )


async def _http_problem(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    # Never echo the path: on the callback route it holds the token.
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        detail = f"This resource accepts {allowed} only."
    elif error.status_code == 404:
        detail = "There is no resource at this path."
    else:
        detail = "The request could not be handled."
    return problem_response(error.status_code, detail=detail, headers=error.headers)


async def _server_error(request: Request, error: Exception) -> Response:
    return problem_response(500, detail="The gateway failed unexpectedly; retry later.")


def _buckets(rate: float, burst: int, max_keys: int) -> TokenBuckets | None:
    return TokenBuckets(rate, burst, max_keys=max_keys) if rate > 0 else None


def _spend(buckets: TokenBuckets, key: str, scope: str) -> None:
    wait = buckets.take(key)
    if wait > 0:
        raise RateLimitedError(scope, max(1, math.ceil(wait)))


def _client_address(scope: Scope) -> str:
    # The peer's address, or the one a trusted proxy forwarded (uvicorn's proxy headers).
    client = scope.get("client")
    return client[0] if client else ""


def _loggable(correlation_id: str) -> str:
    # The id comes from an unauthenticated URL: keep each log record one short line.
    if len(correlation_id) <= _MAX_LOGGED_ID and correlation_id.isprintable():
        return correlation_id
    return repr(correlation_id[:_MAX_LOGGED_ID])
