"""The encoders behind the embedder: the lean BERT encoder computes what transformers' forward
computes, on the real default embedding model, without padding; other architectures fall back."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, RobertaConfig, RobertaModel

from service.engine.cpu.bert import BertEncoder
from service.engine.encoder import TransformersEncoder, create_encoder
from service.models.packaged import DEFAULT_EMBEDDING_MODEL

TEXTS = [
    "a cat",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Embeddings map sentences to vectors.",
    "short",
    "A much longer sentence, with commas, numbers like 42 and 1999, and several clauses that go on.",
]


@pytest.fixture(scope="module")
def bert():
    path = DEFAULT_EMBEDDING_MODEL.locate()
    model = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, [tokenizer.encode(text) for text in TEXTS]


@pytest.mark.model
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_the_lean_encoder_matches_transformers(bert, pooling):
    model, batch = bert
    lean = create_encoder(model, pooling=pooling, pad_token_id=0)
    assert isinstance(lean, BertEncoder) and not lean.pads
    with torch.inference_mode():
        expected = TransformersEncoder(model, pooling, pad_token_id=0)(batch)
    torch.testing.assert_close(lean(batch), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.model
def test_a_sentence_gets_the_same_vector_alone_and_in_a_batch(bert):
    model, batch = bert
    lean = create_encoder(model, pooling="mean", pad_token_id=0)
    together = lean(batch)
    for row, ids in enumerate(batch):
        torch.testing.assert_close(lean([ids])[0], together[row], atol=1e-5, rtol=1e-4)


def test_other_architectures_run_on_transformers_forward():
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)
    model = RobertaModel(config).eval()
    encoder = create_encoder(model, pooling="mean", pad_token_id=1)
    assert isinstance(encoder, TransformersEncoder) and encoder.pads
    with torch.inference_mode():
        vectors = encoder([[0, 5, 6, 2], [0, 7, 2]])
        alone = encoder([[0, 7, 2]])
    assert vectors.shape == (2, 32)
    torch.testing.assert_close(vectors[1], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.model
def test_unknown_pooling_is_refused(bert):
    with pytest.raises(ValueError, match="pooling"):
        create_encoder(bert[0], pooling="max", pad_token_id=0)
