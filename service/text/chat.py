"""Chat prompts: messages (and tools) through the model's chat template."""
from __future__ import annotations

from typing import Any

from jinja2.exceptions import TemplateError

from service.errors import InvalidRequest, WrongModelKind
from service.structured.tool_format import messages_with_tools, template_supports_tools

# Unless a request says otherwise, a chat prompt ends where the assistant's answer begins.
ADD_GENERATION_PROMPT = True


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = ADD_GENERATION_PROMPT,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text the model's chat template makes of `messages` (and of the `tools` the
    model may call, in OpenAI's {"type": "function", "function": {…}} form).

    A template without tool support gets tools, tool calls and tool results written into the
    messages in the tool-call format (see structured/tool_format.py)."""
    if not tokenizer.chat_template:
        raise WrongModelKind("This model has no chat template; send a text prompt instead.", field="chat")
    options: dict[str, Any] = {}
    if template_supports_tools(str(tokenizer.chat_template)):
        if tools:
            options["tools"] = tools
    else:
        messages = messages_with_tools(messages, tools)
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **options
        )
    except TemplateError as error:
        raise InvalidRequest(f"The chat template rejected the messages: {error}", field="chat.messages") from None
