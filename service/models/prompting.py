"""Prompts to token ids: chat templates and plain text."""
from __future__ import annotations

from typing import Any

from jinja2.exceptions import TemplateError

from service.errors import InvalidRequest, WrongModelKind
from service.models.tool_calls import hermes_messages, template_supports_tools


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text the model's chat template makes of `messages` (and of the `tools` the
    model may call, in OpenAI's {"type": "function", "function": {…}} form).

    A template without tool support gets tools, tool calls and tool results written into the
    messages in the Hermes convention (see tool_calls.hermes_messages)."""
    if not tokenizer.chat_template:
        raise WrongModelKind("This model has no chat template; send a text prompt instead.", field="chat")
    options: dict[str, Any] = {}
    if template_supports_tools(str(tokenizer.chat_template)):
        if tools:
            options["tools"] = tools
    else:
        messages = hermes_messages(messages, tools)
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **options
        )
    except TemplateError as error:
        raise InvalidRequest(f"The chat template rejected the messages: {error}", field="chat.messages") from None


def encode_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    # The template already wrote every special token (BOS included), so none are added again.
    return tokenizer.encode(render_chat(tokenizer, messages, add_generation_prompt, tools), add_special_tokens=False)


def encode_text(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def with_special_tokens(tokenizer: Any, ids: list[int]) -> list[int]:
    """`ids` wrapped in the special tokens the tokenizer adds to text (BERT's CLS … SEP, BOS …).

    Learnt from how it encodes one plain word, since tokenizers expose no common API for it.
    """
    plain = tokenizer.encode("a", add_special_tokens=False)
    wrapped = tokenizer.encode("a", add_special_tokens=True)
    at = next(i for i in range(len(wrapped)) if wrapped[i : i + len(plain)] == plain)
    return wrapped[:at] + ids + wrapped[at + len(plain) :]
