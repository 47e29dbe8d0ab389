"""SSE framing, byte for byte, and generation streams from real gRPC calls to the fake worker."""
from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator

import pytest

from rest_bridge import translate
from rest_bridge.fanout import PromptStreams
from rest_bridge.schemas import ChatCompletionRequest, CompletionRequest
from rest_bridge.sse import DONE, encode_event, generation_events
from rest_bridge.upstream import Upstream
from tests.unit.rest_bridge.fake_worker import FakeWorker
from tokenwire.v1 import generation_pb2

HEADER = translate.ResponseHeader(id="chatcmpl-x", created=1700000000, model="m")


def test_event_framing() -> None:
    assert encode_event({"a": [1, None], "b": "é\n"}) == b'data: {"a":[1,null],"b":"\xc3\xa9\\n"}\n\n'
    assert DONE == b"data: [DONE]\n\n"


@pytest.fixture
async def upstream(fake_worker: FakeWorker) -> AsyncIterator[Upstream]:
    pool = Upstream(fake_worker.address, timeout=10)
    yield pool
    await pool.close()


async def run_stream(
    upstream: Upstream,
    fmt: translate.GenerationFormat,
    requests: list[generation_pb2.GenerateRequest],
    n: int,
    include_usage: bool,
) -> bytes:
    stub = upstream.stubs().generation
    streams = PromptStreams([functools.partial(stub.GenerateStream, r, **upstream.call_options("t")) for r in requests])
    assert len(await streams.admitted()) == len(requests)
    return b"".join([event async for event in generation_events(fmt, streams, HEADER, n, include_usage)])


def chunk(choices: list[dict[str, object]], **extra: object) -> bytes:
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
    body["choices"] = choices
    return b"data: " + json.dumps({**body, **extra}, separators=(",", ":")).encode() + b"\n\n"


def content(index: int, text: str, reason: str | None = None) -> dict[str, object]:
    return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": reason}


async def test_chat_stream_bytes(upstream: Upstream) -> None:
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hey"}]})
    stream = await run_stream(upstream, translate.CHAT, [translate.chat_request(body, "t")], 1, False)
    opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    # The fake worker answers "echo: hey" in three deltas, the last one finishing with LENGTH.
    assert stream == (
        chunk([opening])
        + chunk([content(0, "ech")])
        + chunk([content(0, "o: ")])
        + chunk([content(0, "hey", "length")])
        + DONE
    )


async def test_chat_stream_with_usage_and_n(upstream: Upstream) -> None:
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hey"}], "n": 2})
    stream = await run_stream(upstream, translate.CHAT, [translate.chat_request(body, "t")], 2, True)
    events = stream.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert all(set(c) == {"id", "object", "created", "model", "choices", "usage"} for c in chunks)
    assert [c["usage"] is None for c in chunks] == [True] * (len(chunks) - 1) + [False]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == "echo: hey"
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["length"]


async def test_completion_stream_indices_over_prompts(upstream: Upstream) -> None:
    body = CompletionRequest.model_validate({"prompt": ["a", "b", "c"], "n": 2})
    stream = await run_stream(upstream, translate.COMPLETION, translate.completion_requests(body, "t"), 2, False)
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in stream.split(b"\n\n")[:-2]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)
    texts: dict[int, str] = {}
    for c in chunks:
        choice = c["choices"][0]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: "echo: a", 1: "echo: a", 2: "echo: b", 3: "echo: b", 4: "echo: c", 5: "echo: c"}


async def test_failure_after_the_first_byte_is_an_error_event(upstream: Upstream) -> None:
    body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "break"}]})
    stream = await run_stream(upstream, translate.CHAT, [translate.chat_request(body, "t")], 1, True)
    events = stream.split(b"\n\n")
    assert events[-3] == (
        b'data: {"error":{"message":"The engine stopped.","type":"server_error","param":null,"code":"not_ready"}}'
    )
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: ") for e in events[:-1])
