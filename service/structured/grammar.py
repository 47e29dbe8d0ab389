"""Grammars for constrained decoding (structured output, tool calls), with llguidance.

`ConstraintCompiler` turns a JSON schema, "any JSON object", a regex, a list of choices, a Lark
grammar or a set of tool schemas into a *factory*: a zero-argument callable that returns a fresh
`GrammarConstraint` (the engine's TokenConstraint for one sequence). Compiled grammars are cached
per grammar text, and a factory only deep-copies the compiled matcher (under a microsecond), so
the n sequences of a request and later requests with the same schema pay the compilation once.

JSON is generated on one line, with ", " and ": " as separators and no other whitespace (no
newlines, no indentation), so a small model cannot loop emitting whitespace inside a JSON value;
strings and arrays can still run long, and max_new_tokens bounds every generation.

Why llguidance and not xgrammar: BENCHMARKS.md, "Constrained decoding". In short, masks cost far
less than a decode step with either; llguidance has no dependencies (xgrammar pulls triton into a
CPU install) and Lark grammars with inline `%json` schemas and lazy lexemes (free text that
switches to a schema-checked tool call at the format's opening tag).
"""
from __future__ import annotations

import enum
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.structured.tool_format import HERMES

if TYPE_CHECKING:
    import llguidance
    import torch

log = logging.getLogger(__name__)

# No whitespace between JSON tokens: nothing for a small model to loop on.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHE_SIZE = 256


class ToolChoice(enum.Enum):
    """What a chat turn with tools may answer."""

    NONE = "none"  # text only; the tools are not shown
    AUTO = "auto"  # text, or calls
    REQUIRED = "required"  # one or more calls
    NAMED = "named"  # one call of the one function named


class GrammarError(ValueError):
    """The schema, regex or grammar is invalid or unsatisfiable (a client error)."""


@dataclass(frozen=True)
class ToolSchema:
    """A function the model may call: its name and the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


class GrammarConstraint:
    """The grammar state of one sequence: an llguidance matcher (implements TokenConstraint)."""

    __slots__ = ("_matcher", "_words", "_failed")

    def __init__(self, matcher: llguidance.LLMatcher, words: int) -> None:
        self._matcher = matcher
        self._words = words
        self._failed = False

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        target = bitmask[row]
        if target.numel() == self._words and target.is_contiguous() and target.is_cpu:
            self._matcher.unsafe_compute_mask_ptr(target.data_ptr(), self._words * 4)
            return
        # The caller's vocabulary differs from the grammar's: tokens past the grammar's are never allowed.
        import torch

        mask = torch.empty(self._words, dtype=torch.int32)
        self._matcher.unsafe_compute_mask_ptr(mask.data_ptr(), self._words * 4)
        words = min(self._words, target.numel())
        target.zero_()
        target[:words] = mask[:words].to(target.device)

    def accept(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id) and not self._failed:
            # Only when the sampler could not honour the mask (every allowed token banned);
            # is_terminated() is then True and the sequence ends.
            self._failed = True
            log.warning("constrained decoding: token %d rejected: %s", token_id, self._matcher.get_error()[:200])

    def is_terminated(self) -> bool:
        # True once nothing but EOS may follow (the JSON value is complete), after EOS, or on error.
        return self._matcher.is_stopped()


ConstraintFactory = Callable[[], GrammarConstraint]


def _rebase_refs(schema: Any, base: str) -> Any:
    """A copy of `schema` whose local `$ref`s ("#/…") point below `base` (a JSON pointer)."""
    if isinstance(schema, dict):
        return {
            key: (base + value[1:] if key == "$ref" and isinstance(value, str) and value.startswith("#") else _rebase_refs(value, base))
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase_refs(item, base) for item in schema]
    return schema


def _lark_json(schema: dict[str, Any]) -> str:
    """`%json {…}` for a Lark grammar, with the no-whitespace options."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS}, ensure_ascii=False)


def _lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def tool_call_schema(tools: Sequence[ToolSchema]) -> dict[str, Any]:
    """The JSON schema of one call: {"name": <one of the tools>, "arguments": <its parameters>}.

    "name" comes first, so a streaming parser knows the function before its arguments start."""
    variants = []
    for i, tool in enumerate(tools):
        base = f"#/anyOf/{i}/properties/arguments" if len(tools) > 1 else "#/properties/arguments"
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": _rebase_refs(tool.parameters, base)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tool_call_grammar(
    tools: Sequence[ToolSchema],
    choice: ToolChoice,
    *,
    parallel: bool = True,
    response_schema: dict[str, Any] | None = None,
) -> str:
    """A Lark grammar for the output of a chat turn with tools, calls written in the HERMES format.

    - REQUIRED / NAMED: one call (or several when `parallel`), nothing else;
    - AUTO: free text in which the format's opening tag starts a call checked against the tools'
      schemas; with `response_schema`, either calls or one JSON value valid against it.
    """
    if not tools or choice is ToolChoice.NONE:
        raise GrammarError("No tools to call.")
    arguments = _lark_json(tool_call_schema(tools))
    calls = f"call ({_lark_literal(HERMES.separator)} call)*" if parallel else "call"
    call = f"{_lark_literal(HERMES.call_open)} {arguments} {_lark_literal(HERMES.call_close)}"
    if choice is not ToolChoice.AUTO:
        return f"start: {calls}\ncall: {call}\n"
    if response_schema is not None:
        return f"start: calls | answer\ncalls: {calls}\ncall: {call}\nanswer: {_lark_json(response_schema)}\n"
    # Free text until the opening tag (a lazy lexeme), then a checked call, then free text again.
    return (
        f"start: call{'*' if parallel else '?'} tail\n"
        "tail: TEXT\n"
        "TEXT: /(.|\\n)*/\n"
        f"head[lazy]: TEXT {_lark_literal(HERMES.open_tag)}\n"
        f"call: head {_lark_literal(HERMES.padding)} {arguments} {_lark_literal(HERMES.call_close)}\n"
    )


def json_schema_grammar(schema: Any) -> str:
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise GrammarError("A JSON schema must be a JSON object (or true).")
    try:
        return _llguidance().LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as error:
        raise GrammarError(f"Invalid JSON schema: {error}") from None


def _llguidance() -> Any:
    import llguidance

    return llguidance


class ConstraintCompiler:
    """Compiles grammars for one model's tokenizer and caches them (thread-safe).

    `vocab_size` is the width of the model's logits, which may exceed len(tokenizer): the extra
    ids are never allowed. Building the llguidance tokenizer takes about a second, so it happens
    on first use (call the compile methods off the event loop)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int], cache_size: int = CACHE_SIZE) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = max(vocab_size, len(tokenizer)) if vocab_size else len(tokenizer)
        self._eos = sorted(set(eos_token_ids)) or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._ll_tokenizer: llguidance.LLTokenizer | None = None

    @property
    def words(self) -> int:
        return (self._vocab_size + 31) // 32

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        if self._ll_tokenizer is None:
            import llguidance.hf

            try:
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self._vocab_size, eos_token=self._eos or None
                )
            except ValueError as error:
                raise GrammarError(f"Constrained decoding is not available for this tokenizer: {error}") from None
        return self._ll_tokenizer

    def grammar(self, grammar: str) -> ConstraintFactory:
        """A factory for an llguidance grammar: Lark text, or the JSON of a grammar from
        LLMatcher.grammar_from_*(). Raises GrammarError when it is invalid."""
        with self._lock:
            template = self._cache.get(grammar)
            if template is not None:
                self._cache.move_to_end(grammar)
            else:
                llguidance = _llguidance()
                template = llguidance.LLMatcher(self._llg_tokenizer(), grammar, log_level=0)
                if template.is_error():
                    raise GrammarError(template.get_error().strip())
                self._cache[grammar] = template
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        words = self.words
        return lambda: GrammarConstraint(template.deep_copy(), words)

    def json_schema(self, schema: Any) -> ConstraintFactory:
        """Output: one JSON value valid against `schema` (a dict, or its JSON text)."""
        if isinstance(schema, str | bytes):
            try:
                schema = json.loads(schema)
            except ValueError as error:
                raise GrammarError(f"The JSON schema is not valid JSON: {error}") from None
        return self.grammar(json_schema_grammar(schema))

    def json_object(self) -> ConstraintFactory:
        """Output: any JSON object."""
        return self.json_schema({"type": "object"})

    def regex(self, pattern: str) -> ConstraintFactory:
        """Output: text that the regular expression (Rust `regex` syntax) matches as a whole."""
        return self.grammar(_llguidance().LLMatcher.grammar_from_regex(pattern))

    def choice(self, options: Sequence[str]) -> ConstraintFactory:
        """Output: exactly one of `options`."""
        if not options or any(not option for option in options):
            raise GrammarError("A choice needs at least one option, and no empty option.")
        return self.grammar("start: " + " | ".join(_lark_literal(option) for option in options) + "\n")

    def tool_calls(
        self,
        tools: Sequence[ToolSchema],
        choice: ToolChoice,
        *,
        parallel: bool = True,
        response_schema: dict[str, Any] | None = None,
    ) -> ConstraintFactory:
        """Output: tool calls whose arguments validate against the tools' schemas; see
        tool_call_grammar for the choices."""
        for tool in tools:
            # Each schema alone first (cached too), so that an error names its tool.
            try:
                self.grammar(json_schema_grammar(tool.parameters))
            except GrammarError as error:
                raise GrammarError(f"Tool {tool.name!r}: {error}") from None
        return self.grammar(tool_call_grammar(tools, choice, parallel=parallel, response_schema=response_schema))
