"""Structured output and tool calls, in one place.

- tool_format.py: how a model writes tool calls and reads tool results (the wire format, defined
  once) and how tools reach a chat template that does not know them;
- grammar.py: the grammars that constrain decoding (llguidance), tool calls' included;
- plan.py: what a GenerateRequest's structured_output, tools and tool_choice ask for, validated;
- tool_parser.py and reader.py: the generated text split into content and tool-call deltas.

The engine sees none of this: it only gets a TokenConstraint factory (service/engine/types.py).
"""
