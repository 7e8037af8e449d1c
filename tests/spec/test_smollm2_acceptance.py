"""Real acceptance on the real default model: a prompt that asks to repeat a passage."""

from __future__ import annotations

import dataclasses
import inspect
import textwrap

import pytest

from specsa.model.loader import load_model, load_tokenizer
from specsa.model.registry import DEFAULT_MODEL
from specsa.sampling import SamplingParams
from specsa.spec.engine import generate_speculative
from specsa.spec.model_drafter import SelfDrafter
from specsa.spec.ngram import NgramDrafter

PARAMS = SamplingParams(max_new_tokens=48)


@pytest.fixture(scope="module")
def model_and_prompt(gguf_path):
    model, tokenizer = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    passage = inspect.getsource(textwrap.TextWrapper._split)[:1200]
    message = f"Repeat the following Python code exactly, without any comment:\n\n{passage}"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True, return_dict=False)
    return model, list(ids)


@pytest.mark.parametrize("drafter", ["ngram", "self"])
def test_acceptance_length_above_1_5(model_and_prompt, drafter):
    model, prompt = model_and_prompt
    if drafter == "ngram":
        factory = lambda cache, gen: NgramDrafter(1, 4)  # noqa: E731
    else:
        draft_nsa = dataclasses.replace(model.nsa, num_selected=4, window=64)
        factory = lambda cache, gen: SelfDrafter(model, cache, PARAMS, gen, draft_nsa=draft_nsa)  # noqa: E731
    stats = generate_speculative(model, [prompt], PARAMS, frozenset(model.config.eos_token_ids), factory, 4)[0].stats
    print(f"SmolLM2 {drafter} K=4: acceptance length {stats.acceptance_length:.2f}, "
          f"by position {stats.acceptance_rate_by_position}")  # fmt: skip
    assert stats.acceptance_length > 1.5
