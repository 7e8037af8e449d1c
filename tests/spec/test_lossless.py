"""Greedy speculative decoding is token-for-token the autoregressive output, for every
drafter, K and batch shape, on prompts long enough that NSA's selection is sparse."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from specsa.generate import generate
from specsa.model.loader import load_model
from specsa.sampling import SamplingParams
from specsa.spec.engine import generate_speculative
from specsa.spec.lookup_and_model import LookupAndModel
from specsa.spec.model_drafter import DraftModelDrafter, SelfDrafter
from specsa.spec.ngram import NgramDrafter

SPARSE = dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16)  # n·l' = 48 tokens
PARAMS = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def target(tiny_llama):
    return load_model(str(tiny_llama), nsa_overrides=SPARSE)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    from conftest import make_checkpoint

    return load_model(str(make_checkpoint(tmp_path_factory.mktemp("draft"), "llama", num_hidden_layers=1)), nsa_overrides=SPARSE)


def repetitive_prompts(lengths: list[int]) -> list[list[int]]:
    """Random text with a repeated motif, so prompt lookup finds something to propose."""
    gen = torch.Generator().manual_seed(sum(lengths))
    motif = torch.randint(2, 128, (23,), generator=gen).tolist()
    return [(torch.randint(2, 128, (n // 2,), generator=gen).tolist() + motif * 4)[:n] for n in lengths]


BATCHES = {"batch1": [97], "batch4": [61, 110, 75, 88]}


def drafter_factories(target, other_model):
    return {
        "ngram": lambda cache, gen: NgramDrafter(1, 3),
        "self": lambda cache, gen: SelfDrafter(
            target, cache, PARAMS, gen, draft_nsa=dataclasses.replace(target.nsa, num_selected=3, window=8), layers=[0]
        ),
        "draft": lambda cache, gen: DraftModelDrafter(other_model, target, 4, 300, PARAMS, gen, prefill_chunk=32),
    }


@pytest.mark.parametrize("batch", BATCHES)
def test_speculative_greedy_equals_autoregressive(target, other_model, batch):
    prompts = repetitive_prompts(BATCHES[batch])
    expected = [g.token_ids for g in generate(target, prompts, PARAMS, frozenset())]
    for name, factory in drafter_factories(target, other_model).items():
        for k in (1, 3, 7):
            results = generate_speculative(target, prompts, PARAMS, frozenset(), factory, k)
            assert [r.token_ids for r in results] == expected, f"{name} K={k}"
            for r in results:
                assert r.stats.committed == len(r.token_ids) - 1  # the first token comes from prefill
                assert r.stats.accepted <= r.stats.drafted


def test_ngram_drafts_are_accepted_on_repeated_text(target):
    prompts = repetitive_prompts([97])
    result = generate_speculative(target, prompts, PARAMS, frozenset(), lambda c, g: NgramDrafter(1, 3), 3)[0]
    assert result.stats.drafted > 0


def test_eos_inside_accepted_drafts_stops_there(target):
    prompts = repetitive_prompts([80])
    free = generate(target, prompts, PARAMS, frozenset())[0].token_ids
    eos = free[5]
    spec = generate_speculative(target, prompts, PARAMS, frozenset({eos}), lambda c, g: NgramDrafter(1, 3), 7)[0]
    assert spec.token_ids == free[: free.index(eos) + 1] and spec.finish_reason == "eos"


def test_target_as_its_own_draft_model_accepts_everything(target):
    k, rounds = 3, 5
    params = SamplingParams(max_new_tokens=1 + rounds * (k + 1))
    prompts = repetitive_prompts([70, 90])
    factory = lambda cache, gen: DraftModelDrafter(target, target, 2, 300, params, gen)  # noqa: E731
    for result in generate_speculative(target, prompts, params, frozenset(), factory, k):
        assert result.stats.accepted == result.stats.drafted == rounds * k
        assert result.stats.acceptance_length == k + 1
        assert result.stats.acceptance_rate_by_position == [1.0] * k


def test_sampled_speculation_is_seeded_and_sane(target, other_model):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=3)
    prompts = repetitive_prompts([70])
    factory = lambda cache, gen: DraftModelDrafter(other_model, target, 1, 300, params, gen)  # noqa: E731
    first = generate_speculative(target, prompts, params, frozenset(), factory, 3)[0].token_ids
    again = generate_speculative(target, prompts, params, frozenset(), factory, 3)[0].token_ids
    assert first == again and len(first) == 20


def test_bad_speculation_settings_are_rejected(target, tmp_path):
    from conftest import make_checkpoint

    with pytest.raises(ValueError, match="at least 1"):
        generate_speculative(target, [[3, 4]], PARAMS, frozenset(), lambda c, g: NgramDrafter(), 0)
    small_vocab = load_model(str(make_checkpoint(tmp_path, "llama", vocab_size=100)))
    with pytest.raises(ValueError, match="vocabulary"):
        DraftModelDrafter(small_vocab, target, 1, 100, PARAMS, None)
    with pytest.raises(ValueError, match="cmp_block"):
        SelfDrafter(target, target.new_cache(1, 10), PARAMS, None, draft_nsa=dataclasses.replace(target.nsa, cmp_block=16))


class _Alternating:
    """A planner that switches between plain steps and drafts of 2 and 5 tokens, before
    drafting (`gamma`) or, for free drafts, after (`plan`); with a model drafter beside
    the free one, every other draft of 5 is the model's."""

    def __init__(self, with_model: bool = False):
        self.steps, self.observed, self.with_model, self.model_steps = 0, [], with_model, 0

    def gamma(self, running: int = 1) -> int:
        self.steps += 1
        return (0, 2, 0, 0, 5)[self.steps % 5]

    def plan(self, slots, contexts, drafts, evidence) -> tuple[bool, int]:
        length = self.gamma()
        use_model = self.with_model and length == 5 and self.steps % 10 == 4
        self.model_steps += use_model
        return use_model, length

    def observe(self, num_drafted: int, num_accepted: int, evidence: int | None = None) -> None:
        pass

    def observe_model_drafting(self, num_tokens: int, ms: float) -> None:
        pass

    def observe_step(self, gamma: int, ms: float, running: int) -> None:
        self.observed.append(gamma)

    def book_steps(self, running: int) -> None:
        pass


@pytest.mark.parametrize("batch", BATCHES)
def test_plain_and_speculative_steps_mixed_equal_autoregressive(target, other_model, batch):
    """`auto` mixes plain steps (no drafter call) with drafts: every drafter catches up on
    the tokens committed without it, and the output stays the autoregressive one."""
    prompts = repetitive_prompts(BATCHES[batch])
    expected = [g.token_ids for g in generate(target, prompts, PARAMS, frozenset())]
    factories = drafter_factories(target, other_model)
    factories["lookup+model"] = lambda cache, gen: LookupAndModel(NgramDrafter(1, 3), factories["draft"](cache, gen))
    for name, factory in factories.items():
        planner = _Alternating(with_model=name == "lookup+model")
        results = generate_speculative(target, prompts, PARAMS, frozenset(), factory, 5, planner=planner)
        assert [r.token_ids for r in results] == expected, name
        assert 0 in planner.observed and 5 in planner.observed
        assert (planner.model_steps > 0) == (name == "lookup+model")
        for r in results:
            assert r.stats.committed == len(r.token_ids) - 1
