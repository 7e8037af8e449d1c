"""Greedy speculative decoding through the Triton path (verification kernel, and CUDA graphs
on a GPU) gives the autoregressive tokens, for a uniform and a ragged batch, in `exact`."""

from __future__ import annotations

import torch

from specsa.generate import generate
from specsa.model.loader import load_model
from specsa.sampling import SamplingParams
from specsa.spec.engine import generate_speculative
from specsa.spec.model_drafter import DraftModelDrafter

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPARSE = dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16)  # n·l' = 48 tokens


def test_speculative_greedy_with_kernels_equals_autoregressive(tiny_llama):
    """The target drafts for itself (every draft is accepted), so verification really runs
    γ+1 queries per sequence through the kernels; prompts of two lengths."""
    lengths = [52, 63]
    model = load_model(str(tiny_llama), nsa_overrides=SPARSE, device=DEVICE)
    gen = torch.Generator().manual_seed(len(lengths))
    motif = torch.randint(2, 128, (11,), generator=gen).tolist()
    prompts = [(torch.randint(2, 128, (n // 2,), generator=gen).tolist() + motif * 6)[:n] for n in lengths]
    params = SamplingParams(max_new_tokens=6)
    model.use_kernels = False
    expected = [g.token_ids for g in generate(model, prompts, params, frozenset())]
    model.use_kernels = True
    drafter = lambda cache, g: DraftModelDrafter(model, model, len(prompts), 80, params, g, prefill_chunk=64)  # noqa: E731
    results = generate_speculative(model, prompts, params, frozenset(), drafter, 3)
    assert [r.token_ids for r in results] == expected
    assert all(r.stats.accepted > 0 for r in results)


def test_a_steps_query_group_reaches_the_kernel_and_keeps_its_output(tiny_llama, monkeypatch):
    """C, the verifier queries per sparse-attention program (`specsa profile` picks the
    fastest per step shape, and captured steps carry it), changes how the kernel splits its
    work, not what it computes."""
    from specsa.generate import prefill
    from specsa.nsa.kernels import paged

    model = load_model(str(tiny_llama), nsa_overrides=SPARSE, device=DEVICE)
    model.use_kernels = True
    seen = []
    kernel = paged.nsa_paged
    monkeypatch.setattr(paged, "nsa_paged", lambda *a, **kw: seen.append(kw["query_group"]) or kernel(*a, **kw))
    tokens = torch.randint(2, 128, (60,), generator=torch.Generator().manual_seed(0)).tolist()
    outputs = []
    for group in (None, 2):
        cache = model.new_cache(1, 80)
        slot = cache.allocate()
        prefill(model, cache, slot, tokens[:-5], 64)
        step = cache.step([slot], [5])
        step.query_group = group
        outputs.append(model.run(torch.tensor(tokens[-5:], device=DEVICE), step, cache))
    assert seen[-1] == 2 and None in seen
    torch.testing.assert_close(outputs[0], outputs[1])
