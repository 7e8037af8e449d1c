"""The Triton decode path equals the reference: small shapes in the interpreter on the
CPU, the same tests on a GPU when there is one."""

from __future__ import annotations

import pytest
import torch

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.compression import mean_compression
from specsa.nsa.kernels.decode import nsa_decode_paged
from specsa.nsa.reference import nsa_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def filled_cache(cfg: NSAConfig, lengths: list[int], heads: int, dim: int, seed: int, tied: bool = False) -> PagedKVCache:
    """A cache holding random keys/values for sequences of the given lengths, written in
    uneven pieces and interleaved, so pages are scattered. `tied`: every key is the same,
    so block scores tie and the lower index must win."""
    gen = torch.Generator().manual_seed(seed)
    cache = PagedKVCache(num_layers=1, num_kv_heads=heads, head_dim=dim, max_seqs=len(lengths),
                         max_len=max(lengths) + 5, page_size=cfg.sel_block, nsa=cfg, dtype=torch.float32, device=DEVICE)  # fmt: skip
    slots = [cache.allocate() for _ in lengths]
    written = [0] * len(lengths)
    while written != lengths:
        for i, slot in enumerate(slots):
            n = min(int(torch.randint(1, 40, (1,), generator=gen)), lengths[i] - written[i])
            if n:
                kv = torch.randn(2, n, heads, dim, generator=gen).to(DEVICE)
                if tied:
                    kv[0] = 0.5
                start = cache.extend(slot, n)
                cache.write(0, slot, start, kv[0], kv[1])
                cache.update_compressed(0, slot, start, mean_compression, mean_compression)
                written[i] += n
    return cache


CASES = {  # name: (config, lengths, Hq, Hkv, D)
    "mixed-lengths": (dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=24), [150, 7, 33, 97], 8, 2, 16),
    "shorter-than-l": (dict(cmp_block=16, cmp_stride=8, sel_block=16, num_selected=4, window=40), [5, 15, 16, 17], 4, 4, 32),
    "group-1-long": (dict(cmp_block=16, cmp_stride=16, sel_block=32, num_selected=5, window=16), [300], 2, 2, 16),
    "window-past-selection": (dict(cmp_block=8, cmp_stride=8, sel_block=16, num_selected=3, window=70), [211, 64], 6, 3, 16),
    # more than 64 blocks: the selection is assembled from several programs' candidates
    "many-blocks": (dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=6, window=24), [1500, 40], 2, 1, 16),
}


@pytest.mark.parametrize("combine", ["merged", "gated"])
@pytest.mark.parametrize("case", [*CASES, "many-blocks-tied"])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_kernel_equals_reference(case, combine, splits):
    fields, lengths, hq, hkv, dim = CASES[case.removesuffix("-tied")]
    cfg = NSAConfig(**fields, combine=combine)
    cache = filled_cache(cfg, lengths, hkv, dim, seed=len(case) + splits, tied=case.endswith("-tied"))
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(len(lengths), hq, dim, generator=gen).to(DEVICE)
    gates = torch.rand(len(lengths), hq, 3, generator=gen).to(DEVICE)
    slots = torch.arange(len(lengths), dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    out, selected = nsa_decode_paged(
        q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, seq_lens, cache.k_cmp[0], cache.v_cmp[0],
        cfg, gates=gates, splits=splits,
    )  # fmt: skip
    for b, length in enumerate(lengths):
        k, v = cache.keys_values(0, b)
        k_cmp, v_cmp = cache.compressed(0, b)
        ref = nsa_attention(q[b, None, None], k[None], v[None], cfg, gates=gates[b, None, None],
                            k_cmp=k_cmp[None], v_cmp=v_cmp[None])  # fmt: skip
        in_rank_order = selected[b].long()
        ascending = in_rank_order.masked_fill(in_rank_order < 0, 1 << 30).sort(-1).values
        assert torch.equal(ascending.masked_fill(ascending == 1 << 30, -1), ref.selected[0, 0]), f"sequence {b}"
        torch.testing.assert_close(out[b], ref.out[0, 0], atol=2e-5, rtol=2e-5)


def test_model_decode_with_kernels_equals_reference(tiny_llama):
    """The model's decode loop through the Triton path gives the reference's tokens and
    logits (gated with a learned compression would go the same way; merged here)."""
    from specsa.generate import generate
    from specsa.model.loader import load_model
    from specsa.sampling import SamplingParams

    model = load_model(str(tiny_llama), nsa_overrides=dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3,
                                                          window=16), device=DEVICE)  # fmt: skip
    prompts = [torch.randint(2, 128, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (70, 33)]
    params = SamplingParams(max_new_tokens=6)
    model.decode_kernels = False
    reference = [g.token_ids for g in generate(model, prompts, params, frozenset())]
    cache = model.new_cache(1, 80)
    model(torch.tensor(prompts[0], device=DEVICE), [0], [70], cache)
    ref_logits = model.logits(model(torch.tensor([5], device=DEVICE), [0], [1], cache))
    model.decode_kernels = True
    assert [g.token_ids for g in generate(model, prompts, params, frozenset())] == reference
    cache.truncate(0, 70)
    torch.testing.assert_close(model.logits(model(torch.tensor([5], device=DEVICE), [0], [1], cache)), ref_logits,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
