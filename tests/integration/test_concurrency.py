"""Many streams at once through the bridge: continuous batching must not change anyone's text."""
from __future__ import annotations

import asyncio

from .conftest import CHAT_MODEL

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a refrigerator works to a ten year old.",
    "List five facts about the planet Mars.",
    "Describe the water cycle in a few sentences.",
    "What are the benefits of regular exercise?",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue? Explain briefly.",
    "Summarize the plot of Romeo and Juliet.",
]


async def _stream_text(async_client, prompt: str, max_tokens: int) -> tuple[str, str]:
    stream = await async_client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
    )
    parts, finish = [], None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


async def test_32_concurrent_streams_all_complete_with_their_solo_texts(async_client):
    # Different lengths, so sequences join and leave the running batch at different steps.
    jobs = [(PROMPTS[i % len(PROMPTS)], 40 if i % 3 else 12) for i in range(32)]
    solo = {}
    for prompt, max_tokens in set(jobs):
        solo[prompt, max_tokens] = await _stream_text(async_client, prompt, max_tokens)
    together = await asyncio.wait_for(
        asyncio.gather(*(_stream_text(async_client, p, m) for p, m in jobs)), timeout=300
    )
    assert [text for text, _ in together] == [solo[job][0] for job in jobs]
    assert all(text and finish in ("stop", "length") for text, finish in together)
