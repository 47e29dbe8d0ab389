"""Text to token ids: plain text, the special tokens around it, and a cheap lower bound of its
token count."""
from __future__ import annotations

import functools
import json
from typing import Any

from tokenizers.pre_tokenizers import ByteLevel


def encode_text(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def _special_tokens_around_text(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the special tokens the tokenizer adds around text (BERT's CLS and SEP, BOS).

    Learnt from how it encodes one plain word, since tokenizers expose no common API for it.
    """
    plain = tokenizer.encode("a", add_special_tokens=False)
    wrapped = tokenizer.encode("a", add_special_tokens=True)
    at = next(i for i in range(len(wrapped)) if wrapped[i : i + len(plain)] == plain)
    return wrapped[:at], wrapped[at + len(plain) :]


def with_special_tokens(tokenizer: Any, ids: list[int]) -> list[int]:
    """`ids` wrapped in the special tokens the tokenizer adds to text (BERT's CLS … SEP, BOS …).

    Ids that already start and end with exactly those (as Tokenize returns them by default) are
    kept as they are, so both forms give what the text gives.
    """
    prefix, suffix = _special_tokens_around_text(tokenizer)
    wrapped = (
        len(ids) >= len(prefix) + len(suffix)
        and ids[: len(prefix)] == prefix
        and ids[len(ids) - len(suffix) :] == suffix
    )
    return ids if wrapped else prefix + ids + suffix


def _splits_or_maps_bytes(step: dict[str, Any]) -> bool:
    """Whether a pre-tokenizer step keeps every byte of the text: ByteLevel, or a Split that
    removes nothing."""
    return step.get("type") == "ByteLevel" or (step.get("type") == "Split" and step.get("behavior") != "Removed")


@functools.cache
def _byte_level_bound(tokenizer: Any) -> tuple[int, str] | None:
    """(the most UTF-8 bytes of text one token stands for, the ASCII characters encoding drops)
    of a byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3); None for any other tokenizer.

    Such a tokenizer turns every byte of the text into exactly one token's worth of bytes, except
    bytes missing from its vocabulary (some control characters), which it drops. A normalizer
    (NFC…) or an added token that strips whitespace breaks that, so those tokenizers get None.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    if (
        spec.get("normalizer") is not None
        or spec["model"].get("type") != "BPE"
        or not any(step.get("type") == "ByteLevel" for step in steps)
        or not all(_splits_or_maps_bytes(step) for step in steps)
        or any(token["lstrip"] or token["rstrip"] for token in spec["added_tokens"])
    ):
        return None
    vocab = backend.get_vocab(with_added_tokens=False)
    byte_level = ByteLevel(add_prefix_space=False, use_regex=False)

    def symbols(char: str) -> str:
        return byte_level.pre_tokenize_str(char)[0][0]

    # U+0080…U+00BF are C2 80…C2 BF: their second symbol is a continuation byte's. Without all of
    # those, a character of several bytes could vanish too, and counting that is not cheap.
    if any(symbols(chr(c))[1] not in vocab for c in range(0x80, 0xC0)):
        return None
    dropped = "".join(chr(b) for b in range(0x80) if symbols(chr(b)) not in vocab)
    longest = max(
        max(len(token) for token in vocab),  # one symbol per byte
        max((len(token["content"].encode()) for token in spec["added_tokens"]), default=0),
    )
    return longest, dropped


def min_token_count(tokenizer: Any, text: str) -> int:
    """A lower bound of the number of tokens `text` encodes to, without encoding it: exact for
    byte-level BPE tokenizers, 0 (no bound) for others. Each token stands for at most `longest`
    bytes, and every character but the dropped ones is at least one byte."""
    bound = _byte_level_bound(tokenizer)
    if bound is None:
        return 0
    longest, dropped = bound
    kept = len(text) - sum(text.count(char) for char in dropped)
    return -(-kept // longest)
