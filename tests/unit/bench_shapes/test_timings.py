"""The shapes bench's arithmetic: a load's figures from its requests' timings, and its prompts."""
from __future__ import annotations

import pytest

from bench.timings import PromptSource, RequestTiming, percentile, summarize


def test_a_load_adds_up_its_requests_and_leaves_failed_ones_out_of_the_latencies():
    timings = [
        RequestTiming(start=0.0, first_token=0.5, end=2.5, tokens=5),
        RequestTiming(start=0.1, first_token=0.3, end=3.3, tokens=4),
        RequestTiming(start=0.2, first_token=None, end=4.0, tokens=0, error="UNAVAILABLE: draining"),
    ]
    figures = summarize(timings)
    assert (figures.requests, figures.errors, figures.output_tokens) == (3, 1, 9)
    assert figures.wall_s == pytest.approx(4.0)
    assert figures.tok_per_s == pytest.approx(9 / 4.0)
    # TTFT 0.5 and 0.2; TPOT (2.5 - 0.5) / 4 = 0.5 and (3.3 - 0.3) / 3 = 1.0.
    assert figures.ttft_p50_s == pytest.approx(0.2)
    assert figures.ttft_p95_s == pytest.approx(0.5)
    assert figures.tpot_p50_s == pytest.approx(0.5)
    assert figures.tpot_p95_s == pytest.approx(1.0)


def test_a_single_token_has_no_time_per_output_token():
    assert RequestTiming(start=0.0, first_token=0.4, end=0.4, tokens=1).tpot_s is None
    assert summarize([RequestTiming(start=0.0, first_token=0.4, end=0.4, tokens=1)]).tpot_p50_s is None


def test_a_load_where_everything_failed_has_no_latencies():
    figures = summarize([RequestTiming(start=0.0, first_token=None, end=1.0, tokens=0, error="HTTP 503: busy")])
    assert (figures.errors, figures.output_tokens, figures.tok_per_s) == (1, 0, 0.0)
    assert figures.ttft_p50_s is None and figures.tpot_p50_s is None


def test_percentiles_are_measured_values_by_nearest_rank():
    values = [float(v) for v in (7, 1, 10, 3, 5, 2, 9, 4, 8, 6)]
    assert percentile(values, 0.5) == 5.0
    assert percentile(values, 0.95) == 10.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([], 0.5) is None


def test_prompts_have_their_length_stay_in_the_vocabulary_and_never_share_a_first_token():
    vocab = range(1000, 1300)
    source = PromptSource(vocab, seed=3)
    prompts = source.take(4, 16) + source.take(60, 16)
    assert all(len(prompt) == 16 and all(token in vocab for token in prompt) for prompt in prompts)
    assert len({prompt[0] for prompt in prompts}) == len(prompts)
    assert PromptSource(vocab, seed=3).take(64, 16) == prompts
    assert PromptSource(vocab, seed=4).take(64, 16) != prompts


def test_prompts_run_out_rather_than_repeat_a_first_token():
    source = PromptSource(range(10, 13))
    source.take(3, 4)
    with pytest.raises(RuntimeError, match="more than 3 prompts"):
        source.take(1, 4)
