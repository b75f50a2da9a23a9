"""The gateway's OpenAPI 3.1 document, built from the models its handlers validate with.

The callback body schemas come from the contract models themselves, so the document
cannot drift from what `parse_callback` accepts; the problem and response schemas
are written here beside the statuses `app.py` and `problems.py` answer with.
"""

from __future__ import annotations

import copy
from typing import Any

from webhook_tasks_contracts import CALLBACK_PATH_PREFIX, callback_body_adapter

from .problems import PROBLEM_MEDIA_TYPE

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
CALLBACK_PATH = f"{CALLBACK_PATH_PREFIX}/{{correlation_id}}/{{token}}"
_REF = "#/components/schemas/{model}"

FIELD_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One invalid field of the callback body.",
    "required": ["pointer", "field", "detail"],
    "properties": {
        "pointer": {"type": "string", "description": "JSON pointer into the body, e.g. #/status."},
        "field": {"type": "string", "description": "Dotted field name, or (body)."},
        "detail": {"type": "string"},
    },
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; never quotes a token, key or secret.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "description": "urn:webhook-tasks:problem:<slug> or about:blank.",
        },
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Present on invalid-callback-body problems: one entry per field.",
            "items": {"$ref": _REF.format(model="FieldError")},
        },
    },
}

ACCEPTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "correlationId"],
    "properties": {
        "status": {"const": "accepted"},
        "correlationId": {"type": "string"},
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}},
}


_RETRY_AFTER = {
    "Retry-After": {
        "required": True,
        "description": "Seconds to wait before sending the callback again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def callback_responses() -> dict[str, dict[str, Any]]:
    """Return every response the callback route can give, by status code."""
    return {
        "202": {
            "description": "Accepted: the callback is durable in Kafka.",
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Accepted")}}},
        },
        "400": _problem(
            "Malformed JSON, an invalid body (`errors` names each field), or a bad header."
        ),
        "401": _problem(
            "The token in the URL was not minted for this correlation id; or the URL is bound to "
            "an endpoint with signing secrets and the Standard Webhooks signature is missing, "
            "too old or new (default tolerance 5 min), or matches none of its secrets."
        ),
        "404": _problem("The path names no callback resource."),
        "408": _problem(
            "The request did not arrive whole in time (default 30 s); the connection is closed."
        ),
        "413": _problem("The body is over the configured limit (default 1 MiB)."),
        "415": _problem("The body is not declared as application/json."),
        "431": _problem(
            "The request line and headers are over the limit (default 64 KiB); the connection"
            " is closed."
        ),
        "429": _problem(
            "Too many callbacks from this client or for this correlation id (when configured).",
            _RETRY_AFTER,
        ),
        "503": _problem(
            "Kafka could not take the callback (callback-not-stored), or the callbacks being"
            " handled hold as many bytes as the gateway may (gateway-busy); send it again"
            " after Retry-After.",
            _RETRY_AFTER,
        ),
    }


def build_openapi() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the gateway."""
    body = callback_body_adapter.json_schema(by_alias=True, ref_template=_REF)
    schemas: dict[str, Any] = dict(body.pop("$defs"))
    schemas.update(
        CallbackBody=body,
        Accepted=ACCEPTED_SCHEMA,
        Problem=PROBLEM_SCHEMA,
        FieldError=FIELD_ERROR_SCHEMA,
        Status=STATUS_SCHEMA,
    )
    return copy.deepcopy(
        {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": "webhook-tasks callback gateway",
                "version": "1",
                "description": (
                    "External services POST the outcome of a task to the callbackUrl they were "
                    "given. The URL carries a token only webhook-tasks can mint."
                ),
            },
            "paths": {
                CALLBACK_PATH: {"post": _callback_operation()},
                "/healthz": {"get": _probe("healthz", "Live while the process serves requests.")},
                "/readyz": {"get": _readyz_operation()},
                OPENAPI_PATH: {"get": _openapi_operation()},
            },
            "components": {"schemas": schemas},
        }
    )


def _callback_operation() -> dict[str, Any]:
    return {
        "operationId": "receiveCallback",
        "summary": "Deliver the result, error or progress of a task.",
        "parameters": [
            _path("correlation_id", "The correlationId the task was dispatched with."),
            _path("token", "The capability token of the callbackUrl, as given."),
            _header("webhook-id", "Delivery id; passed on as the event's delivery_id.", 200),
            _header("webhook-timestamp", "Standard Webhooks: Unix time of signing, seconds."),
            _header("webhook-signature", "Standard Webhooks: space-separated v1,<base64>."),
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model="CallbackBody")}}
            },
        },
        "responses": callback_responses(),
    }


def _readyz_operation() -> dict[str, Any]:
    operation = _probe("readyz", "Ready only while callbacks can be published to Kafka.")
    operation["responses"]["503"] = _problem("Not connected to Kafka.")
    return operation


def _probe(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": _REF.format(model="Status")}}},
            }
        },
    }


def _openapi_operation() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "summary": "This document.",
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


def _header(name: str, description: str, max_length: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
    }
    if headers:
        response["headers"] = headers
    return response
