"""Many streams at once through the bridge: continuous batching must not change anyone's text."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .conftest import CHAT_MODEL

TOPICS = ("a robot who paints", "refrigerators", "the planet Mars", "the water cycle", "exercise", "tomato soup",
          "the blue sky", "Romeo and Juliet")
PROMPTS = [f"Tell me about {topic} in a few sentences." for topic in TOPICS]


def _stream_text(client, prompt: str, max_tokens: int) -> tuple[str, str | None]:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
    )
    parts, finish = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


def test_32_concurrent_streams_all_complete_with_their_solo_texts(client):
    # Different lengths, so sequences join and leave the running batch at different steps.
    jobs = [(PROMPTS[i % len(PROMPTS)], 40 if i % 3 else 12) for i in range(32)]
    solo = {job: _stream_text(client, *job) for job in set(jobs)}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        together = list(pool.map(lambda job: _stream_text(client, *job), jobs))
    assert [text for text, _ in together] == [solo[job][0] for job in jobs]
    assert all(text and finish in ("stop", "length") for text, finish in together)
