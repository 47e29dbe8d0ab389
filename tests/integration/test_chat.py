"""Chat completions through the real bridge and worker, with the official openai client."""
from __future__ import annotations

import asyncio
import time

from .conftest import CHAT_MODEL

def test_chat_with_system_message_and_several_turns(client):
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "You are a terse assistant. Answer in a few words."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": [{"type": "text", "text": "And what is the capital of Italy?"}]},
        ],
        temperature=0,
        max_tokens=20,
    )
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.model == CHAT_MODEL and abs(reply.created - time.time()) < 120
    choice = reply.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert "Rome" in choice.message.content
    assert choice.finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens > 30 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_text_equals_non_streamed_text_at_temperature_zero(client):
    messages = [{"role": "user", "content": "Describe the water cycle in two sentences."}]
    args = dict(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=40)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(stream=True, **args))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content and len(streamed) > 20
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]


def test_same_seed_same_text(client):
    args = dict(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Invent a name for a cat."}],
        temperature=1.0,
        max_tokens=16,
    )
    first = client.chat.completions.create(seed=7, **args).choices[0].message.content
    again = client.chat.completions.create(seed=7, **args).choices[0].message.content
    others = {client.chat.completions.create(seed=s, **args).choices[0].message.content for s in (8, 9, 10)}
    assert first == again
    assert others - {first}, "different seeds should not all give the seed-7 text"


def test_max_tokens_finishes_with_length(client):
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_tokens=5,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_stop_strings_cut_the_text_also_across_tokens(client):
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    at = text.index("5")
    spanning = text[at - 2 : at + 1]  # e.g. ", 5": ends inside the greedy continuation
    for stop in (spanning, [spanning, "zzz"]):
        cut = client.chat.completions.create(
            model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=40, stop=stop
        )
        assert cut.choices[0].message.content == text[: at - 2]
        assert cut.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(
            model=CHAT_MODEL, messages=messages, temperature=0, max_tokens=40, stop=stop, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[: at - 2]


def test_n_choices_in_stream_and_not(client):
    args = dict(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Say a random word."}], max_tokens=8, seed=3
    )
    reply = client.chat.completions.create(n=3, **args)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    streamed: dict[int, str] = {}
    finishes: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(n=3, stream=True, **args):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes.setdefault(choice.index, []).append(choice.finish_reason)
    assert sorted(streamed) == [0, 1, 2] and all(len(f) == 1 for f in finishes.values()) and len(finishes) == 3
    assert [streamed[i] for i in range(3)] == [c.message.content for c in reply.choices]


async def test_sixteen_concurrent_streams_all_complete(async_client):
    async def one(i: int) -> tuple[str, str | None]:
        stream = await async_client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": f"Give me a fact about the number {i}."}],
            temperature=0,
            max_tokens=12,
            stream=True,
        )
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    results = await asyncio.gather(*(one(i) for i in range(16)))
    assert all(text and finish in ("stop", "length") for text, finish in results)


def test_a_developer_message_is_read_as_a_system_message(client):
    def ask(role: str):
        return client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": role, "content": "Answer in French only."}, {"role": "user", "content": "Say hello."}],
            temperature=0,
            max_tokens=12,
        )

    as_system, as_developer = ask("system"), ask("developer")
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content
    assert as_developer.usage.prompt_tokens == as_system.usage.prompt_tokens
