"""EmbedRequest inputs to token ids: special tokens, context length."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from service.errors import ContextLengthExceeded
from service.models.packaged import DEFAULT_EMBEDDING_MODEL
from service.servicers.embedding import _input_ids
from tokenwire.v1 import common_pb2, embedding_pb2


@pytest.fixture(scope="module")
def model() -> SimpleNamespace:
    """Just what _input_ids reads of an EmbeddingModel."""
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_EMBEDDING_MODEL.locate())
    return SimpleNamespace(tokenizer=tokenizer, card=SimpleNamespace(context_length=256))


def _ids(model: SimpleNamespace, *inputs: str | list[int], truncate: bool = False) -> list[list[int]]:
    request = embedding_pb2.EmbedRequest(
        inputs=[
            embedding_pb2.EmbedInput(text=item)
            if isinstance(item, str)
            else embedding_pb2.EmbedInput(token_ids=common_pb2.TokenIds(ids=item))
            for item in inputs
        ],
        truncate=truncate,
    )
    return _input_ids(request, model)


def test_token_ids_with_or_without_special_tokens_give_the_texts_ids(model):
    text = "hello world"
    with_special = model.tokenizer.encode(text, add_special_tokens=True)  # what Tokenize returns
    plain = model.tokenizer.encode(text, add_special_tokens=False)
    assert _ids(model, text, with_special, plain) == [with_special] * 3


def test_too_long_input_names_it_in_words_both_apis_share(model):
    with pytest.raises(ContextLengthExceeded) as caught:
        _ids(model, "hi", "word " * 300)
    error = caught.value
    assert error.field == "inputs[1]"
    assert "input 1 is 302 tokens long" in error.message and "256" in error.message
    # REST clients send `input` and have no truncation option.
    assert "inputs" not in error.message and "truncate" not in error.message
    assert len(_ids(model, "word " * 300, truncate=True)[0]) == 256
