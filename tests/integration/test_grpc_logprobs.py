"""Logprobs and echo through the native gRPC API (generated stubs, real worker)."""
from __future__ import annotations

import grpc
import pytest

from tests.rich_status import violated_fields
from tokenwire.v1 import generation_pb2, tokenization_pb2

CHAT = generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content="What is 2+2?")])


def _request(**fields) -> generation_pb2.GenerateRequest:
    fields.setdefault("chat", CHAT)
    fields.setdefault("sampling", generation_pb2.SamplingParams(temperature=0))
    fields.setdefault("stopping", generation_pb2.StoppingCriteria(max_new_tokens=8))
    return generation_pb2.GenerateRequest(**fields)


def _check_entry(entry: generation_pb2.TokenLogprob, top_count: int) -> None:
    assert entry.HasField("logprob") and entry.logprob <= 0
    assert entry.bytes.decode("utf-8", errors="replace") == entry.token
    assert len(entry.top_logprobs) == top_count
    values = [top.logprob for top in entry.top_logprobs]
    assert values == sorted(values, reverse=True)
    if top_count:
        # Greedy decoding picks the most likely token.
        assert entry.top_logprobs[0].token_id == entry.token_id and entry.top_logprobs[0].logprob == entry.logprob


def test_stream_deltas_carry_one_logprob_per_token(stub):
    request = _request(
        logprobs=generation_pb2.LogprobOptions(top_logprobs=4),
        response=generation_pb2.ResponseOptions(token_ids=True),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=64),
    )
    events = list(stub.GenerateStream(request))
    deltas = [e.delta for e in events if e.HasField("delta")]
    for delta in deltas:
        assert [e.token_id for e in delta.logprobs] == list(delta.token_ids)
        assert not delta.prompt_logprobs and not delta.prompt_text
        for entry in delta.logprobs:
            _check_entry(entry, 4)
    last = deltas[-1]
    entries = [e for d in deltas for e in d.logprobs]
    assert len(entries) == events[-1].usage.completion_tokens
    text = "".join(d.text for d in deltas)
    if last.finish.HasField("stop_token_id"):
        # The EOS token comes last; it is not part of the text.
        assert entries[-1].token_id == last.finish.stop_token_id
        entries = entries[:-1]
    assert b"".join(e.bytes for e in entries).decode() == text
    unary = stub.Generate(request).sequences[0]
    assert list(unary.logprobs) == [e for d in deltas for e in d.logprobs]


def test_prompt_logprobs_and_echo(stub, stubs):
    request = _request(
        text="The capital of France is",
        chat=None,
        echo=True,
        logprobs=generation_pb2.LogprobOptions(top_logprobs=2, prompt_logprobs=True),
    )
    events = list(stub.GenerateStream(request))
    info = events[0].prompt_info
    first, *rest = [e.delta for e in events if e.HasField("delta")]
    assert first.prompt_text == "The capital of France is"
    prompt = list(first.prompt_logprobs)
    assert len(prompt) == info.prompt_tokens
    assert not prompt[0].HasField("logprob") and not prompt[0].top_logprobs
    assert all(e.HasField("logprob") and len(e.top_logprobs) == 2 for e in prompt[1:])
    assert b"".join(e.bytes for e in prompt).decode() == "The capital of France is"
    ids = stubs.tokenization.Tokenize(tokenization_pb2.TokenizeRequest(text="The capital of France is")).token_ids
    assert [e.token_id for e in prompt] == list(ids)
    # Only the first delta of a sequence carries the prompt.
    assert all(not d.prompt_text and not d.prompt_logprobs for d in rest)
    unary = stub.Generate(request).sequences[0]
    assert unary.prompt_text == first.prompt_text and list(unary.prompt_logprobs) == prompt


def test_echo_alone_and_n_sequences(stub):
    request = _request(
        text="Hello", chat=None, echo=True, sampling=generation_pb2.SamplingParams(temperature=1.0, n=2, seed=1)
    )
    response = stub.Generate(request)
    assert [s.prompt_text for s in response.sequences] == ["Hello", "Hello"]
    assert all(not s.logprobs and not s.prompt_logprobs for s in response.sequences)
    deltas = [e.delta for e in stub.GenerateStream(request) if e.HasField("delta")]
    assert sorted(d.index for d in deltas if d.prompt_text == "Hello") == [0, 1]


def test_no_logprobs_unless_asked(stub):
    response = stub.Generate(_request())
    assert not response.sequences[0].logprobs and not response.sequences[0].prompt_text


@pytest.mark.parametrize("top", [21, 1000])
def test_top_logprobs_range_is_invalid_argument(stub, top):
    request = _request(logprobs=generation_pb2.LogprobOptions(top_logprobs=top))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["logprobs.top_logprobs"]
