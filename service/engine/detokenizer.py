"""Incremental detokenization that never emits half a character.

Byte-level BPE splits multi-byte characters across tokens; decoding a token alone yields U+FFFD.
Like vLLM and TGI, we decode a short window of recent tokens twice (with and without the newest)
and emit only the difference, waiting while the window still ends in an incomplete character.
"""
from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        # _ids[_prefix:_read] is context already emitted; _ids[_read:] is not emitted yet.
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Adds a token and returns the text it completes (possibly empty)."""
        self._ids.append(token_id)
        return self._take(final=False)

    def flush(self) -> str:
        """Returns whatever is still held back, incomplete characters included."""
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        context = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(context) or (text.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(context) :]
