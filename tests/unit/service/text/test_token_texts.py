"""Token text and exact bytes for logprobs, and their protobuf form."""
from __future__ import annotations

import pytest

from service.engine.types import TokenLogprob
from service.text.token_texts import TokenTexts
from service.servicers.engine_request import echoed_prompt
from service.servicers.generation import token_logprob
from tokenwire.v1 import common_pb2, generation_pb2

TEXTS = ["Hello, world!\n\n  indented", "héllo 🙂 wörld", "日本語のテキスト", "tab\there"]


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_join_to_the_text(tokenizer, text):
    texts = TokenTexts(tokenizer)
    pieces = [texts(token) for token in tokenizer.encode(text, add_special_tokens=False)]
    assert b"".join(raw for _, raw in pieces) == text.encode()
    for shown, raw in pieces:
        assert shown == raw.decode("utf-8", errors="replace")


def test_partial_characters_and_special_tokens(tokenizer):
    texts = TokenTexts(tokenizer)
    ids = tokenizer.encode("日", add_special_tokens=False)
    if len(ids) > 1:  # split across tokens: each part alone is not a character
        assert "\ufffd" in texts(ids[0])[0]
    assert texts(tokenizer.eos_token_id) == (tokenizer.eos_token, tokenizer.eos_token.encode())
    # Leading spaces are kept (decoding a token alone can drop them).
    assert texts(tokenizer.encode(" world", add_special_tokens=False)[0])[0].startswith(" ")


def test_token_logprob_message(tokenizer):
    texts = TokenTexts(tokenizer)
    hello, world = tokenizer.encode("Hello world", add_special_tokens=False)
    message = token_logprob(texts, world, TokenLogprob(world, -0.5, ((world, -0.5), (hello, -2.0))), True)
    assert (message.token_id, message.token, message.bytes, message.logprob) == (world, " world", b" world", -0.5)
    assert [(t.token, t.logprob) for t in message.top_logprobs] == [(" world", -0.5), ("Hello", -2.0)]
    first = token_logprob(texts, hello, None, True)
    assert first.token == "Hello" and not first.HasField("logprob") and not first.top_logprobs
    assert not message.skipped and not first.skipped


def test_special_tokens_are_marked_skipped_only_when_the_text_skips_them(tokenizer):
    texts = TokenTexts(tokenizer)
    eos = tokenizer.eos_token_id
    assert token_logprob(texts, eos, TokenLogprob(eos, -0.1, ()), True).skipped
    assert not token_logprob(texts, eos, TokenLogprob(eos, -0.1, ()), False).skipped


def test_echoed_prompt(tokenizer):
    ids = tuple(tokenizer.encode("Hi there", add_special_tokens=False))
    text = generation_pb2.GenerateRequest(text="Hi  there ")
    assert echoed_prompt(text, tokenizer, ids) == "Hi  there "
    by_ids = generation_pb2.GenerateRequest(token_ids=common_pb2.TokenIds(ids=ids))
    assert echoed_prompt(by_ids, tokenizer, ids) == "Hi there"
    chat = generation_pb2.GenerateRequest(chat=generation_pb2.ChatPrompt())
    rendered = tuple(tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n", add_special_tokens=False))
    assert echoed_prompt(chat, tokenizer, rendered) == "<|im_start|>user\nHi<|im_end|>\n"


class _SentencePieceLike:
    """A Llama-2-style tokenizer: `▁` for spaces and `<0xNN>` byte-fallback pieces."""

    def __init__(self) -> None:
        from tokenizers import decoders

        self.backend_tokenizer = type("Backend", (), {})()
        self.backend_tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        self.added_tokens_decoder = {2: "</s>"}
        self.pieces = {2: "</s>", 10: "\u2581Hello", 11: "<0xE6>", 12: "<0x97>", 13: "<0xA5>"}

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.pieces[token_id]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        raise AssertionError("not needed for known pieces")


def test_sentencepiece_pieces_and_byte_fallback():
    texts = TokenTexts(_SentencePieceLike())
    assert texts(10) == (" Hello", b" Hello")
    assert b"".join(texts(i)[1] for i in (11, 12, 13)).decode() == "日"
    assert texts(2) == ("</s>", b"</s>")
