"""Text completions through the real stack."""
from __future__ import annotations

import pytest

from .conftest import CHAT_MODEL


def test_list_of_prompts_with_n_orders_choices_by_prompt_then_sample(client):
    prompts = ["The capital of France is", "One plus one equals"]
    reply = client.completions.create(model=CHAT_MODEL, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    singles = [client.completions.create(model=CHAT_MODEL, prompt=p, max_tokens=6, temperature=0) for p in prompts]
    texts = [c.text for c in reply.choices]
    # Greedy: both samples of a prompt equal that prompt's single completion.
    assert texts == [singles[0].choices[0].text] * 2 + [singles[1].choices[0].text] * 2
    # Each prompt is counted once, each of its n samples separately.
    assert reply.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert reply.usage.completion_tokens == 2 * sum(s.usage.completion_tokens for s in singles)


@pytest.mark.parametrize("stream", [False, True])
def test_more_prompts_than_the_worker_queues_at_once(client, stream):
    # The worker queues 256 requests: one call per prompt, all at once, was a 429 every time.
    prompts = [f"hi {i}" for i in range(300)]
    args = dict(model=CHAT_MODEL, prompt=prompts, max_tokens=1, temperature=0)
    if stream:
        indices = [c.index for chunk in client.completions.create(stream=True, **args) for c in chunk.choices]
        assert sorted(set(indices)) == list(range(len(prompts)))
    else:
        reply = client.completions.create(**args)
        assert [c.index for c in reply.choices] == list(range(len(prompts)))
        assert all(c.finish_reason in ("stop", "length") for c in reply.choices)


def test_token_id_prompt_equals_text_prompt(client, http):
    text = "The capital of France is"
    ids = http.post("/tokenize", json={"model": CHAT_MODEL, "prompt": text}).json()["tokens"]
    by_text = client.completions.create(model=CHAT_MODEL, prompt=text, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=CHAT_MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids) == by_text.usage.prompt_tokens


def test_streamed_completion_equals_non_streamed(client):
    args = dict(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=20, temperature=0)
    whole = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(stream=True, **args))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
