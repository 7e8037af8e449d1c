"""Paged KV cache: pages, compressed tokens, truncation."""

from __future__ import annotations

import pytest
import torch

from specsa.cache import CacheFullError, PagedKVCache
from specsa.config import NSAConfig
from specsa.model.loader import load_model
from specsa.nsa.compression import compress, mean_compression

NSA = NSAConfig(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16)


def new_cache(max_seqs=3, max_len=100) -> PagedKVCache:
    return PagedKVCache(num_layers=2, num_kv_heads=2, head_dim=4, max_seqs=max_seqs, max_len=max_len,
                        page_size=NSA.sel_block, nsa=NSA, dtype=torch.float64, device="cpu")  # fmt: skip


def append(cache, slot, k, v):
    start = cache.extend(slot, k.shape[0])
    slots, positions = torch.full((k.shape[0],), slot), torch.arange(start, start + k.shape[0])
    for layer in range(2):
        cache.append(layer, k, v, slots, positions, mean_compression, mean_compression)


def test_interleaved_sequences_read_back_and_compress_like_the_whole():
    cache, gen = new_cache(), torch.Generator().manual_seed(0)
    a, b = cache.allocate(), cache.allocate()
    ka, kb = torch.randn(70, 2, 4, generator=gen, dtype=torch.float64), torch.randn(45, 2, 4, generator=gen, dtype=torch.float64)
    for begin, end in [(0, 5), (5, 33), (33, 34), (34, 70)]:  # uneven chunks, interleaved with b
        append(cache, a, ka[begin:end], -ka[begin:end])
        if begin < 45:
            append(cache, b, kb[begin : min(end, 45)], -kb[begin : min(end, 45)])
    k, v = cache.keys_values(1, a)
    torch.testing.assert_close(k, ka)
    torch.testing.assert_close(v, -ka)
    torch.testing.assert_close(cache.keys_values(0, b)[0], kb)
    k_cmp, v_cmp = cache.compressed(1, a)
    assert k_cmp.shape[0] == NSA.num_cmp_tokens(70) == 16
    torch.testing.assert_close(k_cmp, compress(ka[None], NSA, mean_compression)[0])
    torch.testing.assert_close(v_cmp, -k_cmp)


def test_truncation_keeps_pages_and_invalidates_compressed_tokens():
    cache, gen = new_cache(max_seqs=1, max_len=64), torch.Generator().manual_seed(1)
    slot = cache.allocate()
    first = torch.randn(50, 2, 4, generator=gen, dtype=torch.float64)
    append(cache, slot, first, first)
    table = cache.block_table[slot].clone()
    cache.truncate(slot, 20)
    assert cache.compressed(0, slot)[0].shape[0] == NSA.num_cmp_tokens(20) == 4
    assert torch.equal(cache.block_table[slot], table) and (table >= 0).sum() == 4
    replacement = torch.randn(30, 2, 4, generator=gen, dtype=torch.float64)
    append(cache, slot, replacement, replacement)  # into the pages the sequence kept
    assert torch.equal(cache.block_table[slot], table)
    whole = torch.cat([first[:20], replacement])
    torch.testing.assert_close(cache.keys_values(0, slot)[0], whole)
    torch.testing.assert_close(cache.compressed(0, slot)[0], compress(whole[None], NSA, mean_compression)[0])
    with pytest.raises(CacheFullError):
        cache.extend(slot, 15)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(slot, 51)


def test_a_freed_sequence_gives_its_pages_back():
    cache = new_cache(max_seqs=2, max_len=64)
    first = cache.allocate()
    cache.extend(first, 64)
    cache.truncate(first, 10)
    cache.free(first)
    assert (cache.block_table[first] == -1).all()
    second, third = cache.allocate(), cache.allocate()
    cache.extend(second, 64)
    cache.extend(third, 64)  # all 8 pages: only possible once the first's 4 came back
    assert len(set(cache.block_table[[second, third]].flatten().tolist())) == 8


def test_slots_run_out_with_a_clear_error():
    cache = new_cache(max_seqs=1)
    cache.allocate()
    with pytest.raises(CacheFullError, match="slot"):
        cache.allocate()


def test_truncate_then_redecode_gives_the_logits_of_never_going_past(tiny_llama):
    """Speculation's rollback: decode past a point, cut back, decode other tokens."""
    model = load_model(str(tiny_llama), nsa_overrides=dict(cmp_block=8, cmp_stride=4, sel_block=16, num_selected=3, window=16))
    gen = torch.Generator().manual_seed(2)
    prompt, wrong, right = (torch.randint(2, 128, (n,), generator=gen) for n in (61, 13, 9))

    cache = model.new_cache(1, 100)
    model(prompt, [0], [61], cache)
    model(wrong, [0], [13], cache)  # crosses a page and several compressed tokens
    cache.truncate(0, 61)
    after_rollback = model.logits(model(right, [0], [9], cache))

    fresh = model.new_cache(1, 100)
    model(prompt, [0], [61], fresh)
    never_past = model.logits(model(right, [0], [9], fresh))
    torch.testing.assert_close(after_rollback, never_past, atol=1e-6, rtol=1e-6)
    assert (model.logits(model(wrong[:9], [0], [9], model.new_cache(1, 100))) - never_past).abs().max() > 1e-3
