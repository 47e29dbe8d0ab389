"""Logprobs and echo in the bridge: request options, OpenAI's chat shape, the legacy completions
shape, and how streams spread them over chunks (without a server)."""
from __future__ import annotations

import json
from typing import Any

import grpc

from rest_bridge import translate
from rest_bridge.errors import openai_param
from rest_bridge.fanout import PromptStreams
from rest_bridge.schemas import ChatCompletionRequest, CompletionRequest
from rest_bridge.sse import generation_events
from tokenwire.v1 import common_pb2, generation_pb2

HEADER = translate.ResponseHeader(id="x-1", created=1700000000, model="m")
EOS = 2


def entry(token: str, logprob: float | None, *top: tuple[str, float], token_id: int = 7) -> generation_pb2.TokenLogprob:
    message = generation_pb2.TokenLogprob(token_id=token_id, token=token, bytes=token.encode())
    if logprob is not None:
        message.logprob = logprob
    for text, lp in top:
        message.top_logprobs.add(token_id=1, token=text, bytes=text.encode(), logprob=lp)
    return message


def raw(data: bytes, logprob: float) -> generation_pb2.TokenLogprob:
    """A token holding bytes that may be part of a character."""
    return generation_pb2.TokenLogprob(token=data.decode(errors="replace"), bytes=data, logprob=logprob)


def stop_finish() -> generation_pb2.FinishInfo:
    return generation_pb2.FinishInfo(reason=generation_pb2.FINISH_REASON_STOP, stop_token_id=EOS)


# Requests.


def test_chat_request_options() -> None:
    def proto(**fields: Any) -> generation_pb2.GenerateRequest:
        body = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})
        return translate.chat_request(body, "r")

    assert not proto().HasField("logprobs") and not proto(logprobs=False).HasField("logprobs")
    assert proto(logprobs=True).logprobs == generation_pb2.LogprobOptions(top_logprobs=0)
    assert proto(logprobs=True, top_logprobs=20).logprobs == generation_pb2.LogprobOptions(top_logprobs=20)
    assert not proto(logprobs=True).echo


def test_completion_request_options() -> None:
    def protos(**fields: Any) -> list[generation_pb2.GenerateRequest]:
        return translate.completion_requests(CompletionRequest.model_validate({"prompt": ["a", "b"], **fields}), "r")

    assert not any(p.HasField("logprobs") or p.echo for p in protos())
    assert all(p.echo and not p.HasField("logprobs") for p in protos(echo=True))
    plain = generation_pb2.LogprobOptions(top_logprobs=0)
    assert all(p.logprobs == plain and not p.echo for p in protos(logprobs=0))
    echoed = generation_pb2.LogprobOptions(top_logprobs=5, prompt_logprobs=True)
    assert all(p.logprobs == echoed and p.echo for p in protos(logprobs=5, echo=True))


def test_worker_violations_name_the_openai_params() -> None:
    assert openai_param("logprobs.top_logprobs", translate.CHAT_PARAMS) == "top_logprobs"
    assert openai_param("logprobs.top_logprobs", translate.COMPLETION_PARAMS) == "logprobs"
    assert openai_param("echo", translate.COMPLETION_PARAMS) == "echo"


# Shapes.


def shown(*outputs: generation_pb2.SequenceDelta | generation_pb2.Sequence) -> list[str]:
    shaper = translate.ChatLogprobs()
    for output in outputs:
        shaper.add(output)
    return [entry["token"] for entry in shaper.whole()["content"]]


def test_the_ending_stop_token_is_not_shown() -> None:
    sequence = generation_pb2.Sequence(
        text="Hi", logprobs=[entry("Hi", -0.1), entry("<|im_end|>", -0.2, token_id=EOS)], finish=stop_finish()
    )
    assert shown(sequence) == ["Hi"]
    # Ended otherwise (length), every token is shown, even an EOS the model chose.
    sequence.finish.ClearField("stop_token_id")
    assert shown(sequence) == ["Hi", "<|im_end|>"]
    # Prompt tokens come first.
    delta = generation_pb2.SequenceDelta(text="B", prompt_logprobs=[entry("A", None)], logprobs=[entry("B", -1.0)])
    assert shown(delta) == ["A", "B"]


def test_tokens_inside_a_cut_stop_string_are_not_shown() -> None:
    finish = generation_pb2.FinishInfo(reason=generation_pb2.FINISH_REASON_STOP, stop_string=" END")
    deltas = [
        generation_pb2.SequenceDelta(text="One two", logprobs=[entry("One", -0.1), entry(" two", -0.1)]),
        # " E" and "ND" were held back (a possible stop string), then cut.
        generation_pb2.SequenceDelta(text="", logprobs=[entry(" E", -0.1), entry("ND", -0.1)], finish=finish),
    ]
    assert shown(*deltas) == ["One", " two"]
    # Kept in the text (include_stop_str_in_output), the stop string's tokens are shown.
    deltas[1].text = " END"
    assert shown(*deltas) == ["One", " two", " E", "ND"]


def test_chat_shape() -> None:
    shaper = translate.ChatLogprobs()
    assert shaper.chunk() is None and shaper.whole() == {"content": [], "refusal": None}
    shaper.add(generation_pb2.Sequence(text="Hé", logprobs=[entry("Hé", -0.5, ("Hé", -0.5), ("Ho", -1.5))]))
    assert shaper.whole() == {
        "content": [
            {
                "token": "Hé",
                "logprob": -0.5,
                "bytes": [72, 195, 169],
                "top_logprobs": [
                    {"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169]},
                    {"token": "Ho", "logprob": -1.5, "bytes": [72, 111]},
                ],
            }
        ],
        "refusal": None,
    }


def test_completion_shape_offsets_and_sampled_token() -> None:
    shaper = translate.CompletionLogprobs()
    shaper.add(generation_pb2.SequenceDelta(
        prompt_text="Say",
        text=" hi",
        prompt_logprobs=[entry("Say", None)],
        logprobs=[entry(" hi", -0.25, (" ho", -0.5))],
    ))
    assert shaper.chunk() == {
        "tokens": ["Say", " hi"],
        "token_logprobs": [None, -0.25],
        # The sampled token is always there: up to logprobs + 1 entries.
        "top_logprobs": [None, {" ho": -0.5, " hi": -0.25}],
        "text_offset": [0, 3],
    }
    # "é" split over two tokens: both start where the character starts; offsets count on.
    split = [raw(b"\xc3", -1.0), raw(b"\xa9", -0.5), raw(b"!", -0.75)]
    shaper.add(generation_pb2.SequenceDelta(text="é!", logprobs=split))
    assert shaper.chunk()["text_offset"] == [6, 6, 7]
    assert shaper.chunk() == {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def test_non_streaming_answers() -> None:
    sequence = generation_pb2.Sequence(
        text=" there",
        prompt_text="Hi",
        prompt_logprobs=[entry("Hi", None)],
        logprobs=[entry(" there", -0.5), entry("<eos>", -0.1, token_id=EOS)],
        finish=stop_finish(),
    )
    response = generation_pb2.GenerateResponse(sequences=[sequence], usage=common_pb2.Usage())
    choice = translate.generation_response(translate.COMPLETION, [response], 1, HEADER, True)["choices"][0]
    assert choice["text"] == "Hi there"
    assert choice["logprobs"]["tokens"] == ["Hi", " there"] and choice["logprobs"]["text_offset"] == [0, 2]
    # Echo without logprobs: the text only.
    assert translate.generation_response(translate.COMPLETION, [response], 1, HEADER)["choices"][0] == {
        "index": 0, "text": "Hi there", "logprobs": None, "finish_reason": "stop"
    }
    chat = generation_pb2.Sequence(text="Yes", logprobs=[entry("Yes", -0.5)], finish=stop_finish())
    reply = generation_pb2.GenerateResponse(sequences=[chat], usage=common_pb2.Usage())
    logprobs = translate.generation_response(translate.CHAT, [reply], 1, HEADER, True)["choices"][0]["logprobs"]
    assert [c["token"] for c in logprobs["content"]] == ["Yes"] and logprobs["refusal"] is None


# Streams.


class ListCall:
    """Stands in for a GenerateStream call: a prompt info, the deltas, the usage."""

    def __init__(self, *deltas: generation_pb2.SequenceDelta) -> None:
        self._messages = [generation_pb2.GenerateStreamResponse(prompt_info=generation_pb2.PromptInfo())]
        self._messages += [generation_pb2.GenerateStreamResponse(delta=d) for d in deltas]
        self._messages.append(generation_pb2.GenerateStreamResponse(usage=common_pb2.Usage(completion_tokens=3)))

    async def read(self) -> Any:
        return self._messages.pop(0) if self._messages else grpc.aio.EOF

    def cancel(self) -> bool:
        return False


async def stream_choices(fmt: translate.GenerationFormat, call: ListCall) -> list[dict[str, Any]]:
    streams = PromptStreams([lambda: call])
    events = [event async for event in generation_events(fmt, streams, HEADER, 1, False, True)]
    assert events[-1] == b"data: [DONE]\n\n"
    return [json.loads(event[len(b"data: ") :])["choices"][0] for event in events[:-1]]


async def test_chat_stream_carries_each_chunks_tokens() -> None:
    call = ListCall(
        generation_pb2.SequenceDelta(text="Hel", logprobs=[entry("Hel", -0.1)]),
        # No text yet (held back): its token waits for the next chunk.
        generation_pb2.SequenceDelta(text="", logprobs=[entry("lo", -0.2)]),
        generation_pb2.SequenceDelta(text="lo!", logprobs=[entry("!", -0.3)]),
        generation_pb2.SequenceDelta(logprobs=[entry("<eos>", -0.4, token_id=EOS)], finish=stop_finish()),
    )
    opening, *chunks, last = await stream_choices(translate.CHAT, call)
    assert opening["logprobs"] is None
    assert [[c["token"] for c in chunk["logprobs"]["content"]] for chunk in chunks] == [["Hel"], ["lo", "!"]]
    assert all(chunk["logprobs"]["refusal"] is None for chunk in chunks)
    assert last["finish_reason"] == "stop" and last["logprobs"] is None


async def test_completion_stream_echo_and_offsets() -> None:
    call = ListCall(
        generation_pb2.SequenceDelta(
            text=" a", prompt_text="Q:", prompt_logprobs=[entry("Q", None), entry(":", -2.0)],
            logprobs=[entry(" a", -0.5)],
        ),
        generation_pb2.SequenceDelta(text="b", logprobs=[entry("b", -0.25)]),
        generation_pb2.SequenceDelta(logprobs=[entry("<eos>", -0.4, token_id=EOS)], finish=stop_finish()),
    )
    first, second, last = await stream_choices(translate.COMPLETION, call)
    assert first["text"] == "Q: a"
    assert first["logprobs"]["tokens"] == ["Q", ":", " a"] and first["logprobs"]["text_offset"] == [0, 1, 2]
    assert first["logprobs"]["token_logprobs"][0] is None and first["logprobs"]["top_logprobs"][0] is None
    assert second["logprobs"]["text_offset"] == [4]
    # Pitfall 8: never null on completions once asked for, even on a chunk without tokens.
    assert last["logprobs"] == {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
