"""Each token's exact bytes and its text, as logprobs show them (OpenAI's `token` and `bytes`).

Decoding a token alone loses bytes: byte-level BPE splits multi-byte characters across tokens,
and decoders strip or rewrite leading spaces. So the bytes come from the token's vocabulary piece,
read the way the tokenizer's decoder reads it (byte-level alphabet, `<0xNN>` byte fallback, `▁`
for a space), with a plain decode as the fallback for other tokenizers.
"""
from __future__ import annotations

import functools
import json
import re
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable stand-in character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars)}


def _decoder_types(tokenizer: Any) -> set[str]:
    """The types of the fast tokenizer's decoder (flattening a Sequence); empty when unknown."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return set()
    try:
        # The decoder alone, as JSON (cheap, unlike serializing the whole tokenizer).
        decoder = json.loads(decoder.__getstate__())
    except (ValueError, TypeError, AttributeError):
        return set()
    parts = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    return {part.get("type", "") for part in parts if isinstance(part, dict)}


class TokenTexts:
    """token id → (text, bytes), cached. The text is the bytes decoded as UTF-8, with U+FFFD
    where a token holds only part of a character."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        decoders = _decoder_types(tokenizer)
        self._byte_level = "ByteLevel" in decoders
        self._byte_fallback = "ByteFallback" in decoders
        self._metaspace = bool(decoders & {"Metaspace", "Replace"})
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._added = {token_id: str(token) for token_id, token in added.items()}
        # What decoding with skip_special_tokens leaves out.
        self.special_ids = frozenset(token_id for token_id, token in added.items() if getattr(token, "special", False))
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        found = self._cache.get(token_id)
        if found is None:
            raw = self._bytes(token_id)
            found = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), raw)
        return found

    def _bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            if self._byte_level:
                table = _byte_level_decoder()
                if all(char in table for char in piece):
                    return bytes(table[char] for char in piece)
            if self._byte_fallback and (match := _BYTE_TOKEN.fullmatch(piece)):
                return bytes([int(match.group(1), 16)])
            if self._metaspace:
                return piece.replace(_METASPACE, " ").encode()
        return self._tokenizer.decode([token_id], skip_special_tokens=False).encode()
