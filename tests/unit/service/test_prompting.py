from transformers import AutoTokenizer

from service.models.packaged import DEFAULT_EMBEDDING_MODEL
from service.models.prompting import with_special_tokens


def test_with_special_tokens_matches_text_encoding_for_bert_and_llama(tokenizer):
    bert = AutoTokenizer.from_pretrained(DEFAULT_EMBEDDING_MODEL.locate())
    for tok in (bert, tokenizer):
        text = "hello world"
        raw = tok.encode(text, add_special_tokens=False)
        assert with_special_tokens(tok, raw) == tok.encode(text, add_special_tokens=True)
    assert with_special_tokens(bert, [7592]) == [bert.cls_token_id, 7592, bert.sep_token_id]
