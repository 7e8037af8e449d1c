"""A `PromptCache` kept between calls prefills only the new part of a prompt, and what it
generates is what a fresh cache would have generated."""

from __future__ import annotations

import pytest
import torch

from specsa.generate import generate
from specsa.model.loader import load_model
from specsa.prompt_cache import PromptCache, common_prefix
from specsa.sampling import SamplingParams
from specsa.spec.engine import generate_speculative
from specsa.spec.ngram import NgramDrafter

SPARSE = dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16)  # sparse past 48 tokens
PARAMS = SamplingParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def model(tiny_llama):
    return load_model(str(tiny_llama), nsa_overrides=SPARSE)


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(2, 128, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_a_prompt_continuing_an_earlier_request_prefills_only_what_is_new(model):
    prompt_cache = PromptCache(model, max_seqs=2, max_len=300)
    first = generate(model, [tokens(90, 0)], PARAMS, frozenset(), prompt_cache=prompt_cache)[0]
    assert first.cached_tokens == 0
    follow_up = first.context + tokens(30, 1)  # the conversation goes on
    second = generate(model, [follow_up], PARAMS, frozenset(), prompt_cache=prompt_cache)[0]
    assert second.cached_tokens == len(first.context) - 1  # the last token it sampled was never fed
    assert second.token_ids == generate(model, [follow_up], PARAMS, frozenset())[0].token_ids


def test_a_shared_beginning_is_cut_back_to_and_the_rest_prefilled(model):
    prompt_cache = PromptCache(model, max_seqs=2, max_len=300)
    document = tokens(70, 2)
    generate(model, [document + tokens(20, 3)], PARAMS, frozenset(), prompt_cache=prompt_cache)
    question = document + tokens(25, 4)
    again = generate(model, [question, tokens(60, 5)], PARAMS, frozenset(), prompt_cache=prompt_cache)
    assert [g.cached_tokens for g in again] == [common_prefix(document + tokens(20, 3), question), 0]
    fresh = generate(model, [question, tokens(60, 5)], PARAMS, frozenset())
    assert [g.token_ids for g in again] == [g.token_ids for g in fresh]


def test_speculative_decoding_reuses_the_cache_and_stays_lossless(model):
    prompt_cache = PromptCache(model, max_seqs=1, max_len=300)
    motif = tokens(23, 6)
    prompt = tokens(40, 7) + motif * 3

    def speculate(prompts, cache=None):
        return generate_speculative(model, prompts, PARAMS, frozenset(), lambda c, g: NgramDrafter(), 4,
                                    prompt_cache=cache)  # fmt: skip

    first = speculate([prompt], prompt_cache)[0]
    follow_up = first.context + motif
    second = speculate([follow_up], prompt_cache)[0]
    assert second.cached_tokens > len(prompt)
    assert second.token_ids == generate(model, [follow_up], PARAMS, frozenset())[0].token_ids


def test_the_slot_parked_longest_ago_makes_room(model):
    prompt_cache = PromptCache(model, max_seqs=2, max_len=200)
    prompts = [tokens(50, seed) for seed in (8, 9, 10)]
    for prompt in prompts:
        generate(model, [prompt], PARAMS, frozenset(), prompt_cache=prompt_cache)
    held = list(prompt_cache.parked.values())
    assert len(held) == 2 and all(any(common_prefix(h, p) == 50 for h in held) for p in prompts[1:])
    reused = generate(model, [prompts[0]], PARAMS, frozenset(), prompt_cache=prompt_cache)[0]
    assert reused.cached_tokens == 0  # its cache had been given up


def test_too_many_or_too_long_prompts_and_a_failed_call_leave_a_usable_cache(model):
    prompt_cache = PromptCache(model, max_seqs=2, max_len=100)
    with pytest.raises(ValueError, match="3 prompts at once, but the prompt cache holds 2"):
        generate(model, [tokens(10, s) for s in range(3)], PARAMS, frozenset(), prompt_cache=prompt_cache)
    with pytest.raises(ValueError, match="past the prompt cache's 100 tokens"):
        generate(model, [tokens(95, 0)], PARAMS, frozenset(), prompt_cache=prompt_cache)

    def failing_drafter(cache, generator):
        raise RuntimeError("drafter failed")

    with pytest.raises(RuntimeError, match="drafter failed"):
        generate_speculative(model, [tokens(20, 1)], PARAMS, frozenset(), failing_drafter, 2, prompt_cache=prompt_cache)
    assert prompt_cache.cache.num_free_slots == 2 and not prompt_cache.parked
    assert len(generate(model, [tokens(20, 2)] * 2, PARAMS, frozenset(), prompt_cache=prompt_cache)) == 2


def test_a_prompt_cache_serves_only_the_model_it_was_made_for(model, tiny_llama):
    other = load_model(str(tiny_llama), nsa_overrides=SPARSE)
    with pytest.raises(ValueError, match="made for another model"):
        generate(other, [tokens(20, 0)], PARAMS, frozenset(), prompt_cache=PromptCache(model, 1, 100))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_a_later_call_replays_the_graphs_an_earlier_one_captured(tiny_llama):
    model = load_model(str(tiny_llama), nsa_overrides=SPARSE, device="cuda")
    prompt_cache = PromptCache(model, max_seqs=1, max_len=300)

    def speculate(prompt, cache=None):
        return generate_speculative(model, [prompt], PARAMS, frozenset(), lambda c, g: NgramDrafter(), 4,
                                    prompt_cache=cache)[0]  # fmt: skip

    first = speculate(tokens(80, 9), prompt_cache)
    graphs, shapes = prompt_cache.graphs, set(prompt_cache.graphs.captured)
    follow_up = first.context + tokens(20, 10)
    second = speculate(follow_up, prompt_cache)
    assert prompt_cache.graphs is graphs and set(graphs.captured) == shapes  # nothing captured again
    assert second.token_ids == speculate(follow_up).token_ids
    plain = generate(model, [follow_up + tokens(5, 11)], PARAMS, frozenset(), prompt_cache=prompt_cache)[0]
    assert prompt_cache.graphs is graphs  # a plain call takes them too (T = 1 is among the shapes)
    assert plain.token_ids == generate(model, [follow_up + tokens(5, 11)], PARAMS, frozenset())[0].token_ids
