from service.engine.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer

TEXT = "Crème brûlée 😀 costs 5€ — 世界, ok?"


def test_incremental_text_equals_full_decode_and_never_splits_a_character(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in ids]
    pieces.append(detokenizer.flush())
    assert all(REPLACEMENT_CHAR not in piece for piece in pieces)
    assert "".join(pieces) == tokenizer.decode(ids) == TEXT
    # The emoji is several byte-level tokens: some pushes must have returned nothing.
    assert len(ids) > len([p for p in pieces if p])


def test_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode("Hi", add_special_tokens=False) + [tokenizer.eos_token_id]
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    text = "".join(detokenizer.push(t) for t in ids) + detokenizer.flush()
    assert text == "Hi"


def test_flush_returns_an_incomplete_character(tokenizer):
    ids = tokenizer.encode("😀", add_special_tokens=False)
    assert len(ids) > 1
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push(ids[0]) == ""
    assert REPLACEMENT_CHAR in detokenizer.flush()
