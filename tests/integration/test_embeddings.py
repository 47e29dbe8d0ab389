"""Embeddings through the real stack: float, base64 (the SDK's default), similarity."""
from __future__ import annotations

import base64
import math
import struct

import pytest

from .conftest import EMBEDDING_MODEL


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_float_embeddings_shape_and_similarity(client):
    sentences = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    reply = client.embeddings.create(model=EMBEDDING_MODEL, input=sentences, encoding_format="float")
    assert reply.object == "list" and reply.model == EMBEDDING_MODEL
    assert [d.index for d in reply.data] == [0, 1, 2] and all(d.object == "embedding" for d in reply.data)
    vectors = [d.embedding for d in reply.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.3
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 10


def test_base64_decodes_to_the_same_floats(client, http):
    text = "The quick brown fox."
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=text, encoding_format="float").data[0].embedding
    raw = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": text, "encoding_format": "base64"})
    assert raw.status_code == 200
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == floats
    # The SDK asks for base64 by default and decodes it itself.
    assert client.embeddings.create(model=EMBEDDING_MODEL, input=text).data[0].embedding == floats


def test_dimensions_truncate_then_normalize_again(client):
    text = "A cat sits on the mat."
    full = client.embeddings.create(model=EMBEDDING_MODEL, input=text, encoding_format="float").data[0].embedding
    for dimensions in (64, 4):
        short = client.embeddings.create(
            model=EMBEDDING_MODEL, input=text, dimensions=dimensions, encoding_format="float"
        ).data[0].embedding
        norm = math.sqrt(sum(x * x for x in full[:dimensions]))
        assert len(short) == dimensions
        assert short == pytest.approx([x / norm for x in full[:dimensions]], abs=1e-5)
    # Base64 (the SDK's default) is truncated the same way.
    assert len(client.embeddings.create(model=EMBEDDING_MODEL, input=text, dimensions=8).data[0].embedding) == 8


@pytest.mark.parametrize("add_special_tokens", [False, True])
def test_token_id_inputs_embed_like_their_text(client, http, add_special_tokens):
    """/tokenize's ids embed like the text, with CLS and SEP (its default) or without."""
    texts = ["hello world", "A kitten."]
    tokenize = [
        {"model": EMBEDDING_MODEL, "prompt": text, "add_special_tokens": add_special_tokens} for text in texts
    ]
    ids = [http.post("/tokenize", json=body).json()["tokens"] for body in tokenize]
    by_text = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    by_ids = client.embeddings.create(model=EMBEDDING_MODEL, input=ids, encoding_format="float")
    for text_vector, id_vector in zip(by_text.data, by_ids.data):
        assert id_vector.embedding == pytest.approx(text_vector.embedding, abs=1e-5)
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens
    single = client.embeddings.create(model=EMBEDDING_MODEL, input=ids[0], encoding_format="float")
    assert single.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=1e-5)


def test_too_long_input_is_400_in_rest_words(http):
    reply = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": ["hi", "word " * 300]})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input[1]")
    assert "256" in error["message"]
    # The worker's words must hold for REST: `input` (not `inputs`), and no truncation option.
    assert "inputs" not in error["message"] and "truncate" not in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "dimensions": 385}, "dimensions"),
        ({"input": [[10**6]]}, "input[0]"),
        ({"input": ""}, "input[0]"),
    ],
)
def test_invalid_embedding_inputs_are_400(http, body, param):
    reply = http.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, **body})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param
