"""The Triton append equals the cache's PyTorch append: raw tokens and the mean-pooled
compressed tokens a step completes, including those whose tokens arrive in the same step."""

from __future__ import annotations

import torch

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.compression import mean_compression
from specsa.nsa.kernels.append import append_paged

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NSA = NSAConfig(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16)


def new_cache(nsa: NSAConfig | None) -> PagedKVCache:
    return PagedKVCache(num_layers=2, num_kv_heads=2, head_dim=16, max_seqs=3, max_len=100, page_size=16, nsa=nsa,
                        dtype=torch.float32, device=DEVICE)  # fmt: skip


def test_append_kernel_equals_pytorch_append():
    # ragged steps: prefill chunks, single tokens, a sequence missing from a step
    steps = [[(0, 13), (1, 3), (2, 1)], [(0, 1), (1, 9), (2, 30)], [(0, 22), (2, 5)], [(1, 1), (0, 1)]]
    for nsa in (NSA, None):
        reference, kernel, gen = new_cache(nsa), new_cache(nsa), torch.Generator().manual_seed(0)
        for cache in (reference, kernel):
            for _ in range(3):
                cache.allocate()
        for step in steps:
            slots, lens = [s for s, _ in step], [n for _, n in step]
            k, v = torch.randn(2, sum(lens), 2, 16, generator=gen).to(DEVICE)
            batch_r, batch_k = reference.step(slots, lens), kernel.step(slots, lens)
            reference.append(1, k, v, batch_r.token_slots, batch_r.positions, mean_compression, mean_compression)
            append_paged(kernel, 1, k, v, batch_k.token_slots, batch_k.positions)
        for slot in range(3):
            for got, want in zip(kernel.keys_values(1, slot), reference.keys_values(1, slot)):
                assert torch.equal(got, want)
            if nsa is not None:
                assert kernel.compressed(1, slot)[0].shape[0] == nsa.num_cmp_tokens(reference.lengths[slot])
                for got, want in zip(kernel.compressed(1, slot), reference.compressed(1, slot)):
                    torch.testing.assert_close(got, want)
