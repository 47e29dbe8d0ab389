"""Framework-level behaviour through Starlette's TestClient, with no worker behind the bridge."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from rest_bridge.app import create_app
from rest_bridge.config import BridgeSettings
from rest_bridge.routes import common

# Nothing listens on port 1: every gRPC call fails with UNAVAILABLE.
NO_WORKER = BridgeSettings(worker_address="127.0.0.1:1", request_timeout=5)
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(NO_WORKER)

    async def crash(request: Request) -> Any:
        raise RuntimeError("boom")

    app.router.routes.append(Route("/crash", crash))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    assert body["error"]["message"]
    return body["error"]


POST_ROUTES = [CHAT, "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"]


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"",
        b'{"model": "m",}',
        b"\xff\xfe",
        b'{"messages": NaN}',
        b'{"temperature": Infinity}',
        # A lone surrogate is no Unicode text (protobuf cannot encode it).
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
    ],
)
def test_malformed_json_is_a_400(client: TestClient, content: bytes) -> None:
    error = error_of(client.post(CHAT, content=content, headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"].startswith("We could not parse the JSON body of your request")


def nested(depth: int) -> str:
    """`depth` levels of objects and lists, alternating, around a number."""
    opening = "".join('{"a":' if level % 2 == 0 else "[" for level in range(depth))
    return opening + "1" + "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize(
    "content",
    [
        '{"a":' * 1000 + "1" + "}" * 1000,
        "[" * 1000 + "]" * 1000,
        # 500 levels, which json.loads parsed: validation (json.dumps of the arguments) recursed on.
        '{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": '
        '{"name": "f", "arguments": %s}}]}]}' % nested(500),
    ],
    ids=["objects", "lists", "inside-a-valid-body"],
)
def test_deeply_nested_json_is_a_400_not_a_crash(client: TestClient, path: str, content: str) -> None:
    error = error_of(client.post(path, content=content, headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"].startswith("We could not parse the JSON body of your request")
    assert "recursion limit" in error["message"]


def test_a_body_as_deep_as_the_parser_allows_is_validated_and_translated(client: TestClient) -> None:
    """200 levels: validation and translation (json.dumps of arguments, parameters, schema) cope."""
    deep = nested(194)  # inside 6 levels of body: 200 in all
    body = (
        '{"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": '
        '[{"id": "c", "function": {"name": "f", "arguments": %s}}]}, {"role": "tool", "tool_call_id": "c", '
        '"content": "y"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": %s}}], '
        '"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": %s}}}'
    ) % (deep, deep, deep)
    # Past validation and translation: the (absent) worker answers.
    error_of(client.post(CHAT, content=body, headers={"content-type": "application/json"}), 503)


def test_a_utf8_byte_order_mark_is_ignored(client: TestClient) -> None:
    content = b"\xef\xbb\xbf" + b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    # Parsed and validated: the (absent) worker answers.
    error_of(client.post(CHAT, content=content, headers={"content-type": "application/json"}), 503)


@pytest.mark.parametrize("content", [b"[]", b'"text"', b"42", b"null"])
def test_body_must_be_an_object(client: TestClient, content: bytes) -> None:
    assert "JSON object" in error_of(client.post(CHAT, content=content), 400)["message"]


def test_wrong_content_type(client: TestClient) -> None:
    response = client.post(CHAT, content=b"model=m", headers={"content-type": "application/x-www-form-urlencoded"})
    assert "content type" in error_of(response, 400)["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": "m", "messages": USER, "temperature": 5}, "temperature"),
        (CHAT, {"model": "m", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        (CHAT, {"model": "m", "messages": USER, "n": "many"}, "n"),
        (CHAT, {"model": "m"}, "messages"),
        (CHAT, {"model": "m", "messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (CHAT, {"model": "m", "messages": USER, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"model": "m", "prompt": "x", "echo": "sometimes"}, "echo"),
        ("/v1/embeddings", {"model": "m", "input": []}, "input"),
        ("/tokenize", {"model": "m"}, "prompt"),
        ("/detokenize", {"model": "m", "tokens": ["a"]}, "tokens[0]"),
    ],
)
def test_validation_is_400_never_422(client: TestClient, path: str, body: dict[str, Any], param: str) -> None:
    error = error_of(client.post(path, json=body), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_unknown_route_is_a_404_envelope(client: TestClient) -> None:
    error = error_of(client.get("/v1/nothing"), 404)
    assert "/v1/nothing" in error["message"] and error["code"] is None


@pytest.mark.parametrize(("method", "path"), [("POST", f"{CHAT}/"), ("POST", "/tokenize/"), ("GET", "/health/")])
def test_a_trailing_slash_is_an_unknown_route_not_a_redirect(client: TestClient, method: str, path: str) -> None:
    """Not Starlette's empty 307: clients do not all follow it for a POST. OpenAI answers a 404."""
    response = client.request(method, path, json={"model": "m", "messages": USER}, follow_redirects=False)
    error = error_of(response, 404)
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"] == f"Unknown request URL: {method} {path}."


def test_wrong_method_is_a_405_envelope(client: TestClient) -> None:
    response = client.get(CHAT)
    error_of(response, 405)
    assert response.headers["allow"] == "POST"


def test_unexpected_exception_is_a_500_envelope(client: TestClient) -> None:
    response = client.get("/crash", headers={"x-request-id": "crash-1"})
    error = error_of(response, 500)
    assert error["type"] == "server_error" and "boom" not in error["message"]
    assert response.headers["x-request-id"] == "crash-1"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHAT, {"model": "m", "messages": USER}),
        ("POST", CHAT, {"model": "m", "messages": USER, "stream": True}),
        ("POST", "/v1/completions", {"model": "m", "prompt": ["a", "b"]}),
        ("POST", "/v1/embeddings", {"model": "m", "input": "a"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/org/name:v1", None),
        ("GET", "/health", None),
        ("POST", "/tokenize", {"prompt": "a"}),
    ],
)
def test_unreachable_worker_is_a_503(client: TestClient, method: str, path: str, body: Any) -> None:
    error = error_of(client.request(method, path, json=body), 503)
    assert error["type"] == "server_error"


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    assert client.get("/nothing", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/nothing").headers["x-request-id"]
    assert len(made) == 32
    # Not printable ASCII: replaced, since gRPC metadata could not carry it.
    assert client.get("/nothing", headers={"x-request-id": "a b"}).headers["x-request-id"] != "a b"


def test_too_large_body_is_a_413_envelope(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "MAX_BODY_BYTES", 100)
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 200}]}
    assert "larger than 100 bytes" in error_of(client.post(CHAT, json=body), 413)["message"]
