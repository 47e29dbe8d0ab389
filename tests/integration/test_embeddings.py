"""Embeddings through the real stack: float, base64 (the SDK's default), similarity."""
from __future__ import annotations

import base64
import math
import struct

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


def test_token_id_inputs_and_dimensions(client):
    reply = client.embeddings.create(model=EMBEDDING_MODEL, input=[[7592, 2088]], dimensions=64, encoding_format="float")
    vector = reply.data[0].embedding
    assert len(vector) == 64 and abs(math.sqrt(sum(x * x for x in vector)) - 1) < 1e-3
