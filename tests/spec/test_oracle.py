"""The oracle drafter: right tokens at the set rate by position, lossless through the engine."""

from __future__ import annotations

import pytest

from specsa.generate import generate
from specsa.model.loader import load_model
from specsa.sampling import SamplingParams
from specsa.spec.engine import generate_speculative
from specsa.spec.oracle import OracleDrafter


def test_acceptance_by_position_follows_the_set_rates():
    prompt, continuation = [1, 2, 3], list(range(10, 2010))
    oracle = OracleDrafter([prompt], [continuation], [0.9, 0.5, 0.1], vocab_size=100_000, seed=1)
    right = [0, 0, 0]
    for done in range(1, 1990):  # the draws depend on where a draft lands, so move along
        proposal = oracle.propose([0], [prompt + continuation[:done]], [3])
        for i, token in enumerate(proposal.tokens[0]):
            right[i] += token == continuation[done + i]
        assert proposal.verdict[0] == next((i for i in range(3) if proposal.tokens[0][i] != continuation[done + i]), 3)
    assert [round(r / 1989, 1) for r in right] == [0.9, 0.5, 0.1]
    again = OracleDrafter([prompt], [continuation], [0.9, 0.5, 0.1], vocab_size=100_000, seed=1)
    context = prompt + continuation[:7]
    assert again.propose([0], [context], [3]).tokens == oracle.propose([0], [context], [3]).tokens  # common luck


def test_a_token_is_right_or_wrong_whichever_step_drafts_it():
    """Common luck across strategies: steps that start elsewhere meet the same draws on the
    tokens they share (at a flat rate, the same verdicts)."""
    prompt, continuation = [1, 2, 3], list(range(10, 60))
    oracle = OracleDrafter([prompt], [continuation], [0.5], vocab_size=100_000, seed=3)
    long_step = oracle.propose([0], [prompt + continuation[:10]], [12]).tokens[0]  # tokens 10..21
    short_step = oracle.propose([0], [prompt + continuation[:14]], [8]).tokens[0]  # tokens 14..21
    assert short_step == long_step[4:]
    assert 0 < sum(a == b for a, b in zip(long_step, continuation[10:22])) < 12  # some right, some wrong


def test_unknown_sequence_and_bad_rates_are_clear_errors():
    with pytest.raises(ValueError, match="probabilities"):
        OracleDrafter([[1]], [[2]], [1.5], vocab_size=10)
    with pytest.raises(ValueError, match="no reference continuation"):
        OracleDrafter([[1]], [[2, 3]], [1.0], vocab_size=10).propose([0], [[4, 9]], [1])


def test_oracle_speculation_is_lossless_and_accepts_at_its_rate(tiny_llama):
    model = load_model(str(tiny_llama))
    prompts = [[5, 6, 7, 8] * 5, [9, 10, 11] * 4]
    params = SamplingParams(max_new_tokens=20)
    reference = [g.token_ids for g in generate(model, prompts, params, frozenset())]
    factory = lambda cache, gen: OracleDrafter(prompts, reference, [1.0], vocab_size=model.config.vocab_size)  # noqa: E731
    results = generate_speculative(model, prompts, params, frozenset(), factory, 4)
    assert [r.token_ids for r in results] == reference
    assert all(r.stats.acceptance_length == pytest.approx(5.0, abs=1.0) for r in results)


def test_the_verdict_keeps_the_set_acceptance_when_the_target_leaves_the_reference(tiny_llama):
    """A reference the target does not follow (as after a bf16 near-tie) would be rejected
    at every step; the oracle's verdict keeps acceptance at its rate, the cost measured."""
    model = load_model(str(tiny_llama))
    prompts = [[5, 6, 7, 8] * 5]
    params = SamplingParams(max_new_tokens=20)
    reference = [g.token_ids for g in generate(model, prompts, params, frozenset())]
    wrong = [[(t + 1) % model.config.vocab_size for t in reference[0]]]
    factory = lambda cache, gen: OracleDrafter(prompts, wrong, [1.0], vocab_size=model.config.vocab_size)  # noqa: E731
    (result,) = generate_speculative(model, prompts, params, frozenset(), factory, 4)
    assert result.stats.acceptance_length == pytest.approx(5.0, abs=1.0)
    assert result.token_ids[1:5] == wrong[0][1:5]  # after the prefill's token: the verdict's drafts
