"""The served OpenAPI document: built from the models, true to every answer the gateway gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema_rs
import pytest
from starlette.routing import Route
from webhook_tasks_contracts import CallbackTokens, callback_body_adapter, callback_url
from webhook_tasks_gateway import GatewaySettings, create_app
from webhook_tasks_gateway.openapi import CALLBACK_PATH, OPENAPI_PATH, build_openapi
from webhook_tasks_gateway.problems import ProblemError

REF = "#/components/schemas/{model}"


def subclasses(cls: type[ProblemError]) -> set[type[ProblemError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= subclasses(sub)
    return found


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(OPENAPI_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served: dict[str, Any] = response.json()
    return served


def validator_for(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    root = {**schema, "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(root)


def response_schema(document: dict[str, Any], status: int) -> tuple[str, dict[str, Any]]:
    response = document["paths"][CALLBACK_PATH]["post"]["responses"][str(status)]
    [(media_type, content)] = response["content"].items()
    return media_type, content["schema"]


async def test_served_document_is_the_built_one_and_openapi_3_1(
    document: dict[str, Any],
) -> None:
    assert document == json.loads(json.dumps(build_openapi()))
    assert document["openapi"] == "3.1.0"


async def test_callback_body_schemas_are_the_models_schemas(document: dict[str, Any]) -> None:
    expected = callback_body_adapter.json_schema(by_alias=True, ref_template=REF)
    schemas = document["components"]["schemas"]

    for name, schema in expected.pop("$defs").items():
        assert schemas[name] == schema
    assert schemas["CallbackBody"] == expected
    body = document["paths"][CALLBACK_PATH]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": REF.format(model="CallbackBody")
    }
    assert body["required"] is True


async def test_every_route_and_method_is_documented(
    document: dict[str, Any], settings: GatewaySettings, publisher: Any, tokens: CallbackTokens
) -> None:
    app = create_app(settings, publisher, tokens)
    routes = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }

    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == routes


async def test_every_status_the_callback_route_answers_is_documented(
    document: dict[str, Any],
) -> None:
    raised = {cls.status for cls in subclasses(ProblemError)}
    # 202 on success; 404 comes from routing, 408 and 431 from the HTTP protocol, none
    # from a ProblemError.
    answered = {*raised, 202, 404, 408, 431}

    documented = {int(code) for code in document["paths"][CALLBACK_PATH]["post"]["responses"]}
    assert documented == answered


async def test_responses_with_retry_after_document_it(document: dict[str, Any]) -> None:
    responses = document["paths"][CALLBACK_PATH]["post"]["responses"]
    with_header = {code for code, response in responses.items() if "headers" in response}

    assert {"503"} <= with_header
    for code in with_header:
        assert responses[code]["headers"]["Retry-After"]["required"] is True


async def test_documented_schemas_accept_the_product_summary_examples(
    document: dict[str, Any],
) -> None:
    body = validator_for(document, {"$ref": REF.format(model="CallbackBody")})

    assert body.is_valid(
        {
            "correlationId": "c-1",
            "status": "success",
            "resultUrl": "https://cdn.example.com/x.mp4",
            "metadata": {"duration": 12},
        }
    )
    assert body.is_valid({"correlationId": "c-1", "status": "error", "error": "quota"})
    assert body.is_valid(
        {"correlationId": "c-1", "status": "progress", "progress": 40, "message": "rendering"}
    )
    assert not body.is_valid({"correlationId": "c-1", "status": "progress", "progress": 101})
    assert not body.is_valid({"correlationId": "c-1", "status": "done"})
    assert not body.is_valid({"status": "success"})


class TestAnswersMatchTheDocument:
    """Each kind of answer, produced for real, validates against its documented schema."""

    @pytest.fixture
    def check(self, document: dict[str, Any]) -> Callable[[httpx.Response], None]:
        def check(response: httpx.Response) -> None:
            media_type, schema = response_schema(document, response.status_code)
            assert response.headers["content-type"] == media_type
            validator_for(document, schema).validate(response.json())

        return check

    async def test_accepted(
        self, client: httpx.AsyncClient, tokens: CallbackTokens, cid: str, check: Any
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            json={"correlationId": cid, "status": "progress", "progress": 10},
        )

        assert response.status_code == 202
        check(response)

    @pytest.mark.parametrize(
        ("content", "content_type", "status"),
        [
            (b"{", "application/json", 400),
            (b'{"status": "success"}', "application/json", 400),
            (b"{}", "text/plain", 415),
        ],
    )
    async def test_refusals_of_the_body(
        self,
        client: httpx.AsyncClient,
        tokens: CallbackTokens,
        cid: str,
        check: Any,
        content: bytes,
        content_type: str,
        status: int,
    ) -> None:
        response = await client.post(
            tokens.callback_url("http://gateway", cid),
            content=content,
            headers={"content-type": content_type},
        )

        assert response.status_code == status
        check(response)

    async def test_invalid_token(self, client: httpx.AsyncClient, cid: str, check: Any) -> None:
        response = await client.post(callback_url("http://gateway", cid, "k.forged"), json={})

        assert response.status_code == 401
        check(response)

    async def test_unknown_path(self, client: httpx.AsyncClient, check: Any) -> None:
        response = await client.post("/v1/callbacks/a/b/c", json={})

        assert response.status_code == 404
        check(response)

    async def test_too_large(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        make_settings: Callable[..., GatewaySettings],
        publisher: Any,
        tokens: CallbackTokens,
        cid: str,
        check: Any,
    ) -> None:
        async with make_client(
            publisher, gateway_settings=make_settings(gateway_max_body_bytes=10)
        ) as http:
            response = await http.post(
                tokens.callback_url("http://gateway", cid),
                json={"correlationId": cid, "status": "success"},
            )

        assert response.status_code == 413
        check(response)

    async def test_not_stored(
        self,
        make_client: Callable[..., httpx.AsyncClient],
        publisher_class: Any,
        tokens: CallbackTokens,
        cid: str,
        check: Any,
    ) -> None:
        async with make_client(publisher_class(fail_with=ConnectionError("down"))) as http:
            response = await http.post(
                tokens.callback_url("http://gateway", cid),
                json={"correlationId": cid, "status": "success"},
            )

        assert response.status_code == 503
        check(response)
        assert response.headers["retry-after"].isdigit()
