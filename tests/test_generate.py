"""The autoregressive loop: batches, stops, sampling."""

from __future__ import annotations

import pytest
import torch

from specsa.generate import generate
from specsa.model.loader import load_model
from specsa.sampling import SamplingParams, target_probabilities

SPARSE = dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16)


@pytest.fixture(scope="module")
def model(tiny_llama):
    return load_model(str(tiny_llama), nsa_overrides=SPARSE)


def prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 128, (n,), generator=gen).tolist() for n in lengths]


def test_batch_of_different_lengths_equals_one_at_a_time(model):
    batch = prompts([70, 5, 33, 101])
    params = SamplingParams(max_new_tokens=12)
    together = generate(model, batch, params, frozenset(), prefill_chunk=16)
    for prompt, result in zip(batch, together):
        alone = generate(model, [prompt], params, frozenset())[0]
        assert result.token_ids == alone.token_ids
        assert result.finish_reason == "length" and len(result.token_ids) == 12


def test_greedy_matches_argmax_of_full_recompute(model):
    prompt = prompts([40], seed=1)[0]
    result = generate(model, [prompt], SamplingParams(max_new_tokens=6), frozenset())[0]
    sequence = list(prompt)
    for _ in range(6):
        cache = model.new_cache(1, len(sequence))
        logits = model.logits(model(torch.tensor(sequence), [0], [len(sequence)], cache))
        sequence.append(int(logits[-1].argmax()))
    assert result.token_ids == sequence[40:]


def test_eos_stops_one_sequence_and_not_the_others(model):
    batch = prompts([20, 30], seed=2)
    free = generate(model, batch, SamplingParams(max_new_tokens=8), frozenset())
    eos = free[0].token_ids[3]
    stopped = generate(model, batch, SamplingParams(max_new_tokens=8), frozenset({eos}))
    assert stopped[0].token_ids == free[0].token_ids[: free[0].token_ids.index(eos) + 1]
    assert stopped[0].finish_reason == "eos"
    if eos not in free[1].token_ids:
        assert stopped[1].token_ids == free[1].token_ids


def test_seeded_sampling_is_reproducible_and_seeds_differ(model):
    batch = prompts([25], seed=3)
    params = SamplingParams(max_new_tokens=20, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    first = generate(model, batch, params, frozenset())[0].token_ids
    assert generate(model, batch, params, frozenset())[0].token_ids == first
    other = SamplingParams(max_new_tokens=20, temperature=1.5, top_k=50, top_p=0.95, seed=8)
    assert generate(model, batch, other, frozenset())[0].token_ids != first


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    probs = target_probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    torch.testing.assert_close(probs[0, :2], logits[0, :2].softmax(-1))
    assert probs[0, 2:].sum() == 0
    full = logits.softmax(-1)[0]
    top_p = float(full[:2].sum()) + 1e-3  # needs the third token to reach it
    probs = target_probabilities(logits, SamplingParams(temperature=1.0, top_p=top_p))
    assert (probs[0, :3] > 0).all() and probs[0, 3:].sum() == 0
    greedy = target_probabilities(logits, SamplingParams())
    assert greedy.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2)])
def test_bad_sampling_parameters_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_prompts_that_do_not_fit_are_rejected(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[]], SamplingParams(), frozenset())
    with pytest.raises(ValueError, match="context of 1024"):
        generate(model, prompts([1000]), SamplingParams(max_new_tokens=30), frozenset())
