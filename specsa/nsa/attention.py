"""The NSA entry points the model calls: `nsa_attend` (the reference, one sequence at a
time: prefill chunks, verification, the CPU) and `nsa_decode_batch` (the Triton decode
kernels over the paged cache, one new token for each sequence of a batch)."""

from __future__ import annotations

from torch import Tensor

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.reference import NSAOutput, nsa_attention


def nsa_attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cmp: Tensor,
    v_cmp: Tensor,
    cfg: NSAConfig,
    *,
    gates: Tensor | None,
    scale: float,
) -> NSAOutput:
    """q [T, Hq, D] at the last T positions of k, v [S, Hkv, D]; k_cmp, v_cmp [Nc, Hkv, D]
    from the cache; gates [T, Hq, 3] or None. Returns out [T, Hq, D], selected [T, Hkv, n]."""
    result = nsa_attention(
        q[None],
        k[None],
        v[None],
        cfg,
        k_cmp=k_cmp[None],
        v_cmp=v_cmp[None],
        gates=None if gates is None else gates[None],
        scale=scale,
    )
    return NSAOutput(result.out[0], result.selected[0])


def nsa_decode_batch(
    q: Tensor,
    cache: PagedKVCache,
    layer: int,
    slots: Tensor,
    lengths: Tensor,
    cfg: NSAConfig,
    *,
    gates: Tensor | None,
    scale: float,
) -> Tensor:
    """q [B, Hq, D], one new token per sequence, already written to the cache (raw and
    compressed); slots, lengths [B] int32 on q's device. Returns [B, Hq, D]."""
    from specsa.nsa.kernels.paged import nsa_paged  # needs Triton

    out, _ = nsa_decode_paged(
        q, cache.k_pages[layer], cache.v_pages[layer], cache.block_table, slots, lengths,
        cache.k_cmp[layer], cache.v_cmp[layer], cfg, gates=gates, scale=scale,
    )  # fmt: skip
    return out
