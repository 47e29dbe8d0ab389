import torch

from service.engine.sampler import SamplingRow, sample
from service.engine.types import SamplingParams

VOCAB = 50


def _logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed))


def _row(seed: int = 0, prompt=(), output=(), banned=frozenset(), **params) -> SamplingRow:
    return SamplingRow(
        params=SamplingParams(**params),
        generator=torch.Generator().manual_seed(seed),
        prompt_ids=tuple(prompt),
        output_ids=list(output),
        banned_ids=frozenset(banned),
    )


def _draws(logits: torch.Tensor, count: int = 400, **params) -> list[int]:
    row = _row(seed=1, **params)
    return [sample(logits, [row])[0] for _ in range(count)]


def test_temperature_zero_is_argmax():
    logits = _logits(3)
    rows = [_row(temperature=0.0) for _ in range(3)]
    assert sample(logits, rows) == logits.argmax(-1).tolist()


def test_top_k_one_is_argmax_even_when_sampling():
    logits = _logits()
    assert set(_draws(logits, 50, temperature=1.5, top_k=1)) == {int(logits.argmax())}


def test_same_seed_same_tokens_whatever_the_batch_partners():
    logits = _logits(seed=3)
    alone = [sample(logits, [row])[0] for row in [_row(seed=42, temperature=1.0)] for _ in range(20)]
    row, partner = _row(seed=42, temperature=1.0), _row(seed=7, temperature=0.7, top_p=0.5)
    batch = torch.cat([logits, _logits(seed=9)])
    together = [sample(batch, [row, partner])[0] for _ in range(20)]
    assert alone == together


def test_top_p_restricts_to_the_nucleus():
    logits = torch.full((1, VOCAB), -10.0)
    logits[0, :3] = torch.tensor([5.0, 4.0, 3.0])  # ~0.66, 0.24, 0.09 of the mass
    assert set(_draws(logits, top_p=0.8)) == {0, 1}


def test_min_p_drops_unlikely_tokens():
    logits = torch.full((1, VOCAB), -10.0)
    logits[0, :3] = torch.tensor([5.0, 4.0, 1.0])
    assert set(_draws(logits, min_p=0.1)) == {0, 1}


def test_logit_bias_forces_and_bans_tokens():
    logits = _logits()
    assert sample(logits, [_row(temperature=0.0, logit_bias={7: 100.0})]) == [7]
    best = int(logits.argmax())
    assert sample(logits, [_row(temperature=0.0, logit_bias={best: -100.0})]) != [best]


def test_banned_ids_are_never_chosen():
    logits = _logits()
    best = int(logits.argmax())
    assert best not in _draws(logits, 100, banned={best}, temperature=0.0)


def test_repetition_penalty_is_multiplicative_on_seen_tokens():
    logits = torch.zeros(1, VOCAB)
    logits[0, 4], logits[0, 5] = 2.0, 1.9
    # Token 4 appeared in the prompt: 2.0 / 1.5 < 1.9, so token 5 wins.
    assert sample(logits, [_row(temperature=0.0, prompt=[4], repetition_penalty=1.5)]) == [5]
    assert sample(logits, [_row(temperature=0.0, prompt=[4])]) == [4]


def test_presence_and_frequency_penalties_apply_to_output_tokens_only():
    logits = torch.zeros(1, VOCAB)
    logits[0, 4], logits[0, 5] = 2.0, 1.5
    # Only in the prompt: no effect (OpenAI semantics).
    assert sample(logits, [_row(temperature=0.0, prompt=[4], presence_penalty=1.0)]) == [4]
    assert sample(logits, [_row(temperature=0.0, output=[4], presence_penalty=1.0)]) == [5]
    # Frequency scales with the count: 2.0 - 0.2 * 3 < 1.5.
    assert sample(logits, [_row(temperature=0.0, output=[4, 4, 4], frequency_penalty=0.2)]) == [5]
    assert sample(logits, [_row(temperature=0.0, output=[4], frequency_penalty=0.2)]) == [4]


def test_sampling_follows_the_distribution():
    logits = torch.full((1, VOCAB), -30.0)
    logits[0, 0], logits[0, 1] = 0.0, -1.0986  # probabilities 3/4 and 1/4
    draws = _draws(logits, 2000)
    share = draws.count(0) / len(draws)
    assert set(draws) == {0, 1} and 0.7 < share < 0.8
