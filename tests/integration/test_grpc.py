"""The native gRPC API with the generated stubs: stream shape, rich errors, tokenization, health."""
from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.rich_status import reason, violated_fields
from tokenwire.stubs import WorkerStubs
from tokenwire.v1 import common_pb2, embedding_pb2, generation_pb2, models_pb2, tokenization_pb2

from .conftest import CHAT_MODEL, EMBEDDING_MODEL

CHAT = generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content="What is 2+2?")])


def test_stream_is_prompt_info_then_deltas_then_usage(stubs):
    request = generation_pb2.GenerateRequest(
        chat=CHAT,
        sampling=generation_pb2.SamplingParams(temperature=0, seed=5),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=10),
        response=generation_pb2.ResponseOptions(token_ids=True),
    )
    events = list(stubs.generation.GenerateStream(request))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "prompt_info" and kinds[-1] == "usage" and set(kinds[1:-1]) == {"delta"}
    info, usage = events[0].prompt_info, events[-1].usage
    assert info.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and info.seed == 5 and info.max_new_tokens == 10
    deltas = [e.delta for e in events[1:-1]]
    assert [d.HasField("finish") for d in deltas] == [False] * (len(deltas) - 1) + [True]
    assert sum(len(d.token_ids) for d in deltas) == usage.completion_tokens
    assert usage.prompt_tokens == info.prompt_tokens and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    unary = stubs.generation.Generate(request)
    assert unary.sequences[0].text == "".join(d.text for d in deltas)
    assert unary.sequences[0].finish == deltas[-1].finish


GENERATION_TIMINGS = (
    "x-validation-time-ms", "x-queue-time-ms", "x-inference-time-ms", "x-time-to-first-token-ms", "x-time-per-token-ms"
)


def _timings(trailing: dict[str, str], keys: tuple[str, ...]) -> dict[str, float]:
    timings = {key: float(trailing[key]) for key in keys}
    assert all(0 <= value < 60_000 for value in timings.values()), timings
    return timings


def test_trailing_metadata_echoes_the_request_id_with_timings(stubs):
    stub = stubs.generation
    request = generation_pb2.GenerateRequest(chat=CHAT, stopping=generation_pb2.StoppingCriteria(max_new_tokens=5))
    _, call = stub.Generate.with_call(request, metadata=[("x-request-id", "unary-1")])
    unary = dict(call.trailing_metadata())
    assert unary["x-request-id"] == "unary-1"
    timings = _timings(unary, GENERATION_TIMINGS)
    assert timings["x-time-to-first-token-ms"] >= timings["x-validation-time-ms"]
    assert timings["x-inference-time-ms"] >= timings["x-time-per-token-ms"] > 0

    # The body's id wins over the metadata's.
    stream = stub.GenerateStream(
        generation_pb2.GenerateRequest(request_id="stream-1", chat=CHAT, stopping=request.stopping),
        metadata=[("x-request-id", "ignored")],
    )
    assert list(stream)[-1].HasField("usage")
    streamed = dict(stream.trailing_metadata())
    assert streamed["x-request-id"] == "stream-1"
    _timings(streamed, GENERATION_TIMINGS)

    embed = embedding_pb2.EmbedRequest(request_id="embed-1", inputs=[embedding_pb2.EmbedInput(text="hello")])
    _, call = stubs.embedding.Embed.with_call(embed)
    embedded = dict(call.trailing_metadata())
    assert embedded["x-request-id"] == "embed-1"
    _timings(embedded, ("x-validation-time-ms", "x-inference-time-ms"))


def test_errors_echo_the_request_id_and_an_unusable_one_is_replaced(stubs):
    stub = stubs.generation
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(generation_pb2.GenerateRequest(request_id="missing-1", model="nope/nope", text="hi"))
    assert dict(caught.value.trailing_metadata())["x-request-id"] == "missing-1"
    request = generation_pb2.GenerateRequest(
        request_id="café", text="hi", stopping=generation_pb2.StoppingCriteria(max_new_tokens=1)
    )
    _, call = stub.Generate.with_call(request)
    assert len(dict(call.trailing_metadata())["x-request-id"]) == 32  # a fresh uuid4 hex


def test_invalid_argument_carries_field_violation(stubs):
    request = generation_pb2.GenerateRequest(text="hi", sampling=generation_pb2.SamplingParams(top_p=1.5))
    with pytest.raises(grpc.RpcError) as caught:
        stubs.generation.Generate(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "INVALID_PARAMETER"
    assert violated_fields(caught.value) == ["sampling.top_p"]


def test_stream_errors_come_before_any_message(stubs):
    request = generation_pb2.GenerateRequest(model="nope/nope", text="hi")
    stream = stubs.generation.GenerateStream(request)
    with pytest.raises(grpc.RpcError) as caught:
        next(stream)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(caught.value) == "MODEL_NOT_FOUND"


def test_deadline_exceeded_stops_the_call(stubs):
    request = generation_pb2.GenerateRequest(
        text="Write a long essay.", stopping=generation_pb2.StoppingCriteria(max_new_tokens=3000, ignore_eos=True)
    )
    with pytest.raises(grpc.RpcError) as caught:
        stubs.generation.Generate(request, timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_tokenize_and_detokenize_round_trip(stubs):
    stub = stubs.tokenization
    tokens = stub.Tokenize(tokenization_pb2.TokenizeRequest(text="Hello world", return_tokens=True))
    assert len(tokens.token_ids) == len(tokens.tokens) >= 2 and tokens.context_length == 8192
    text = stub.Detokenize(tokenization_pb2.DetokenizeRequest(token_ids=tokens.token_ids)).text
    assert text == "Hello world"
    chat = stub.Tokenize(tokenization_pb2.TokenizeRequest(chat=CHAT))
    assert "What is 2+2?" in chat.rendered_prompt and chat.rendered_prompt.rstrip().endswith("assistant")


def test_tokenize_renders_tools_and_refuses_them_without_chat(stubs):
    stub = stubs.tokenization
    tool = generation_pb2.Tool(type="function", function=generation_pb2.FunctionDefinition(
        name="get_weather", parameters='{"type": "object", "properties": {"city": {"type": "string"}}}'))
    with_tools = stub.Tokenize(tokenization_pb2.TokenizeRequest(chat=CHAT, tools=[tool]))
    assert "get_weather" in with_tools.rendered_prompt
    assert len(with_tools.token_ids) > len(stub.Tokenize(tokenization_pb2.TokenizeRequest(chat=CHAT)).token_ids)
    for request in (
        tokenization_pb2.TokenizeRequest(text="hi", tools=[tool]),
        tokenization_pb2.TokenizeRequest(chat=CHAT, tools=[generation_pb2.Tool(function=generation_pb2.FunctionDefinition(name="no spaces"))]),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Tokenize(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_embed_packed_and_float_agree(stubs):
    stub = stubs.embedding
    inputs = [embedding_pb2.EmbedInput(text="hello")]
    floats = stub.Embed(embedding_pb2.EmbedRequest(inputs=inputs)).embeddings[0].values
    packed = stub.Embed(
        embedding_pb2.EmbedRequest(inputs=inputs, encoding=embedding_pb2.EMBEDDING_ENCODING_PACKED_FLOAT32)
    ).embeddings[0].packed
    import struct

    assert list(struct.unpack("<384f", packed)) == list(floats)


def test_health_and_reflection(stubs, worker_channel):
    health = stubs.health
    for service in ("", "tokenwire.v1.Generation", "tokenwire.v1.Embedding"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(worker_channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"tokenwire.v1.Generation", "tokenwire.v1.Models", "grpc.health.v1.Health"} <= names


def test_models_are_addressed_by_name_version_and_deploy_id(stubs):
    models = stubs.models
    listed = {info.id: info for info in models.ListModels(models_pb2.ListModelsRequest()).models}
    chat = listed[CHAT_MODEL]
    assert chat.kind == models_pb2.MODEL_KIND_GENERATION and chat.version and chat.deploy_id
    assert listed[EMBEDDING_MODEL].kind == models_pb2.MODEL_KIND_EMBEDDING
    assert listed[EMBEDDING_MODEL].embedding_dimension == 384
    generation = stubs.generation
    for address in (CHAT_MODEL, f"{CHAT_MODEL}:{chat.version}", f"deploy_id:{chat.deploy_id}"):
        assert models.GetModel(models_pb2.GetModelRequest(id=address)) == chat
        request = generation_pb2.GenerateRequest(
            model=address, chat=CHAT, stopping=generation_pb2.StoppingCriteria(max_new_tokens=2)
        )
        assert generation.Generate(request).prompt_info.model == CHAT_MODEL
    for address in (f"{CHAT_MODEL}:0000notaversion", "deploy_id:0000notadeploy"):
        with pytest.raises(grpc.RpcError) as caught:
            models.GetModel(models_pb2.GetModelRequest(id=address))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(caught.value) == "MODEL_NOT_FOUND"


def test_embed_dimensions_token_ids_and_model_kind(stubs):
    stub = stubs.embedding
    full = stub.Embed(embedding_pb2.EmbedRequest(inputs=[embedding_pb2.EmbedInput(text="hello world")]))
    values = list(full.embeddings[0].values)
    short = stub.Embed(
        embedding_pb2.EmbedRequest(inputs=[embedding_pb2.EmbedInput(text="hello world")], dimensions=16)
    ).embeddings[0].values
    norm = math.sqrt(sum(x * x for x in values[:16]))
    assert list(short) == pytest.approx([x / norm for x in values[:16]], abs=1e-5)
    tokens = stubs.tokenization.Tokenize(
        tokenization_pb2.TokenizeRequest(model=EMBEDDING_MODEL, text="hello world", add_special_tokens=False)
    )
    by_ids = stub.Embed(
        embedding_pb2.EmbedRequest(
            inputs=[embedding_pb2.EmbedInput(token_ids=common_pb2.TokenIds(ids=tokens.token_ids))]
        )
    )
    assert list(by_ids.embeddings[0].values) == pytest.approx(values, abs=1e-5)
    assert by_ids.usage.prompt_tokens == full.usage.prompt_tokens
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(embedding_pb2.EmbedRequest(model=CHAT_MODEL, inputs=[embedding_pb2.EmbedInput(text="x")]))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(caught.value) == "WRONG_MODEL_KIND"


def test_a_nan_sampling_value_is_invalid_argument(stubs):
    # Every field's check is in tests/unit/service/test_engine_request.py; this is the status.
    request = generation_pb2.GenerateRequest(
        text="hi",
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=2),
        sampling=generation_pb2.SamplingParams(temperature=math.nan),
    )
    with pytest.raises(grpc.RpcError) as caught:
        stubs.generation.Generate(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["sampling.temperature"]


def test_unknown_embedding_encoding_is_invalid_argument(stubs):
    request = embedding_pb2.EmbedRequest(inputs=[embedding_pb2.EmbedInput(text="hello")], encoding=7)
    with pytest.raises(grpc.RpcError) as caught:
        stubs.embedding.Embed(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["encoding"]


def test_embed_token_ids_from_tokenize_round_trip(stubs):
    """Tokenize's ids (with CLS and SEP by default) and the bare ids both embed like the text."""
    stub = stubs.embedding
    tokenize = stubs.tokenization.Tokenize
    text = stub.Embed(embedding_pb2.EmbedRequest(inputs=[embedding_pb2.EmbedInput(text="hello world")]))
    for add_special_tokens in (True, False):
        ids = tokenize(
            tokenization_pb2.TokenizeRequest(
                model=EMBEDDING_MODEL, text="hello world", add_special_tokens=add_special_tokens
            )
        ).token_ids
        by_ids = stub.Embed(
            embedding_pb2.EmbedRequest(inputs=[embedding_pb2.EmbedInput(token_ids=common_pb2.TokenIds(ids=ids))])
        )
        assert list(by_ids.embeddings[0].values) == pytest.approx(list(text.embeddings[0].values), abs=1e-5)
        assert by_ids.usage.prompt_tokens == text.usage.prompt_tokens == 4


HUGE = "x " * 4_000_000  # about 8 MB: seconds to tokenize


def _oversized_call(stubs: WorkerStubs, kind: str) -> grpc.Future:
    if kind == "embed":
        request = embedding_pb2.EmbedRequest(inputs=[embedding_pb2.EmbedInput(text=HUGE)])
        return stubs.embedding.Embed.future(request)
    # 8 MB of spaces: as slow to tokenize, but few tokens (long whitespace tokens), so a small
    # reply, which cannot be still on its way when the other calls are answered.
    request = tokenization_pb2.TokenizeRequest(text=" " * 8_000_000)
    return stubs.tokenization.Tokenize.future(request)


@pytest.mark.parametrize("kind", ["embed", "tokenize"])
def test_an_oversized_input_does_not_stall_other_calls(stubs, kind):
    """Tokenizing runs off the worker's event loop: health checks and small requests made
    meanwhile are answered before the big call ends."""
    big = _oversized_call(stubs, kind)
    health = stubs.health.Check(health_pb2.HealthCheckRequest(service=""))
    small = stubs.generation.Generate(
        generation_pb2.GenerateRequest(text="hi", stopping=generation_pb2.StoppingCriteria(max_new_tokens=1))
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING and small.usage.completion_tokens == 1
    assert not big.done()
    if kind == "tokenize":
        assert len(big.result().token_ids) > 8192
    else:
        assert big.exception().code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(big.exception()) == "CONTEXT_LENGTH_EXCEEDED"


@pytest.mark.parametrize(
    "prompt",
    [{"text": HUGE}, {"chat": generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content=HUGE)])}],
    ids=["text", "chat"],
)
def test_an_oversized_prompt_is_refused_without_tokenizing(stubs, prompt):
    with pytest.raises(grpc.RpcError) as caught:
        stubs.generation.Generate(generation_pb2.GenerateRequest(**prompt))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "CONTEXT_LENGTH_EXCEEDED"
    assert "at least" in caught.value.details()  # the bound, not a count
