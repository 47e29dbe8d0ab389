"""GenerateRequest validation: ranges (NaN included) and the context length, before the engine."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from service.errors import ContextLengthExceeded, InvalidRequest
from service.servicers import prompt_input
from service.servicers.engine_request import build_engine_request
from tokenwire.limits import DEFAULT_MAX_RUNNING
from tokenwire.v1 import generation_pb2


@pytest.fixture(scope="module")
def model(tokenizer) -> SimpleNamespace:
    """Just what build_engine_request reads of the default GenerationModel: its tokenizer, its
    context length, its sampling defaults (none that these tests leave unset), and of its engine
    the running limit and a KV cache that holds a whole context."""
    return SimpleNamespace(
        tokenizer=tokenizer,
        card=SimpleNamespace(context_length=8192),
        sampling_defaults={},
        engine=SimpleNamespace(max_running=DEFAULT_MAX_RUNNING, max_sequence_tokens=8192),
    )


def _build(model, **fields) -> None:
    request = generation_pb2.GenerateRequest(
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=2), **{"text": "hi", **fields}
    )
    build_engine_request(request, model, "test")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("group", "name"),
    [
        ("sampling", "temperature"),
        ("sampling", "top_p"),
        ("sampling", "min_p"),
        ("penalties", "presence_penalty"),
        ("penalties", "frequency_penalty"),
        ("penalties", "repetition_penalty"),
    ],
)
def test_non_finite_sampling_values_are_refused(model, group, name, value):
    message = {"sampling": generation_pb2.SamplingParams, "penalties": generation_pb2.PenaltyParams}[group]
    with pytest.raises(InvalidRequest) as caught:
        _build(model, **{group: message(**{name: value})})
    assert caught.value.field == f"{group}.{name}"


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_logit_bias_is_refused(model, value):
    with pytest.raises(InvalidRequest) as caught:
        _build(model, penalties=generation_pb2.PenaltyParams(logit_bias={5: value}))
    assert caught.value.field == "penalties.logit_bias"


@pytest.mark.parametrize("kind", ["text", "chat"])
def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(model, monkeypatch, kind):
    def tokenize(*args: object, **kwargs: object) -> list[int]:
        raise AssertionError("tokenized")

    monkeypatch.setattr(prompt_input, "encode_text", tokenize)
    huge = "x " * 4_000_000
    chat = generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content=huge)])
    request = generation_pb2.GenerateRequest(**({"text": huge} if kind == "text" else {"chat": chat}))
    with pytest.raises(ContextLengthExceeded) as caught:
        build_engine_request(request, model, "test")
    assert caught.value.field == "prompt" and "at least" in caught.value.message


def test_a_prompt_the_bound_cannot_refuse_is_counted_exactly(model):
    # 10001 tokens, more than the 8192 of the context, but far fewer characters than the bound needs.
    with pytest.raises(ContextLengthExceeded) as caught:
        _build(model, text="x " * 10_000)
    assert "your prompt is 10001 tokens long" in caught.value.message
    _build(model, text="x " * 4_000)  # fits
