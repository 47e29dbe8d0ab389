import json
import random

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from service.models.packaged import DEFAULT_EMBEDDING_MODEL
from service.text.encoding import min_token_count, with_special_tokens


@pytest.fixture(scope="module")
def bert():
    return AutoTokenizer.from_pretrained(DEFAULT_EMBEDDING_MODEL.locate())


def test_with_special_tokens_matches_text_encoding_for_bert_and_llama(tokenizer, bert):
    for tok in (bert, tokenizer):
        text = "hello world"
        raw = tok.encode(text, add_special_tokens=False)
        assert with_special_tokens(tok, raw) == tok.encode(text, add_special_tokens=True)
    assert with_special_tokens(bert, [7592]) == [bert.cls_token_id, 7592, bert.sep_token_id]


def test_with_special_tokens_keeps_ids_that_already_carry_them(bert):
    cls, sep = bert.cls_token_id, bert.sep_token_id
    wrapped = bert.encode("hello world", add_special_tokens=True)
    assert wrapped[0] == cls and wrapped[-1] == sep
    assert with_special_tokens(bert, wrapped) == wrapped
    assert with_special_tokens(bert, [cls, sep]) == [cls, sep]  # what the empty text gives
    # Only the exact prefix and suffix count: one of them alone is content to wrap.
    assert with_special_tokens(bert, [cls, 7592]) == [cls, cls, 7592, sep]
    assert with_special_tokens(bert, [7592, sep]) == [cls, 7592, sep, sep]
    assert with_special_tokens(bert, [cls]) == [cls, cls, sep]


def _random_texts(count: int) -> list[str]:
    rng = random.Random(0)
    code_points = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0x10000, 0x10FFFF)]
    return [
        "".join(chr(rng.randint(*rng.choice(code_points))) for _ in range(rng.randint(1, 2000)))
        for _ in range(count)
    ]


# Long tokens (runs of spaces, dashes), characters the vocabulary lacks (dropped when encoding),
# special tokens written in the text, characters of 2 to 4 bytes.
EDGE_TEXTS = [
    "", " " * 5000, "-" * 5000, "\n" * 3000, "\x04" * 1000, "a\x04" * 500, "<|im_start|>" * 200,
    "x " * 5000, "é" * 1000, "日本語" * 300, "🙂" * 300, "\U00040000" * 100,
]


def test_min_token_count_never_exceeds_the_real_count(tokenizer):
    for text in EDGE_TEXTS + _random_texts(200):
        real = len(tokenizer.encode(text, add_special_tokens=False))
        assert min_token_count(tokenizer, text) <= real, text[:40]


def test_min_token_count_bounds_long_texts(tokenizer):
    text = "x " * 4_000_000  # 8 MB: seconds to encode, refused at once by the bound
    assert min_token_count(tokenizer, text) > 8192
    assert min_token_count(tokenizer, "\x04" * 1_000_000) == 0  # encodes to nothing


class _Backed:
    """Just what min_token_count reads of a tokenizer."""

    def __init__(self, backend: Tokenizer) -> None:
        self.backend_tokenizer = backend


@pytest.mark.parametrize(
    "change",
    [
        lambda spec: spec.update(normalizer={"type": "NFC"}),  # can shorten the text
        lambda spec: spec["added_tokens"][0].update(lstrip=True),  # eats any whitespace run
        lambda spec: spec.update(pre_tokenizer={"type": "Whitespace"}),  # drops whitespace
    ],
)
def test_min_token_count_is_zero_where_no_bound_is_exact(tokenizer, bert, change):
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    change(spec)
    text = "x " * 100_000
    assert min_token_count(_Backed(Tokenizer.from_str(json.dumps(spec))), text) == 0
    assert min_token_count(bert, text) == 0  # WordPiece: a long word is one [UNK]
