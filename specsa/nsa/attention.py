"""Attention over the paged cache for one forward step, NSA or dense: the Triton kernels
(CUDA) or the reference (anywhere). The model's one entry point.

A step's `selection` is returned as the path computed it (a [B, T, Hkv, n] tensor for one
batched kernel call, else a list per sequence) and may be handed back to the same path
in a later layer of the same step: that is the `reuse` precision.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from specsa.cache import PagedKVCache, StepBatch
from specsa.config import NSAConfig
from specsa.nsa.compression import mean_compression
from specsa.nsa.reference import nsa_attention

# Dense steps with more queries than this (prefill chunks) go to SDPA, not the paged kernel.
DENSE_KERNEL_MAX_QUERIES = 64


def append_step(cache: PagedKVCache, layer: int, k: Tensor, v: Tensor, batch: StepBatch, phi_k, phi_v, use_kernels: bool):
    """Write the step's k, v [N, Hkv, D] and the compressed tokens they complete: one
    Triton launch for mean pooling, the cache's PyTorch path otherwise."""
    if use_kernels and phi_k is mean_compression and phi_v is mean_compression:
        from specsa.nsa.kernels.append import append_paged  # needs Triton

        append_paged(cache, layer, k, v, batch.token_slots, batch.positions)
    else:
        cache.append(layer, k, v, batch.token_slots, batch.positions, phi_k, phi_v)


def paged_attention(
    q: Tensor,
    cache: PagedKVCache,
    layer: int,
    batch: StepBatch,
    nsa: NSAConfig | None,
    *,
    gates: Tensor | None,
    scale: float,
    use_kernels: bool,
    selection=None,
    share_group: int = 1,
):
    """q [N, Hq, D] for the step's tokens, whose keys are already in the cache.
    gates [N, Hq, 3] for `gated`. Returns (out [N, Hq, D], selection or None)."""
    # Dense prefill chunks go to SDPA; everything else runs the kernels when asked.
    use_kernels = use_kernels and (nsa is not None or max(batch.query_lens) <= DENSE_KERNEL_MAX_QUERIES)
    if use_kernels and batch.query_len is not None:
        return _kernels(q, cache, layer, batch, nsa, gates, scale, selection, share_group)
    out = q.new_empty(q.shape)
    selections = []
    for i, first, last in batch.spans():  # one sequence at a time
        rows = slice(first, last)
        given = None if selection is None else selection[i]
        seq_gates = None if gates is None else gates[rows]
        if use_kernels:
            out[rows], chosen = _kernels(q[rows], cache, layer, batch.sequence(i), nsa, seq_gates, scale, given, share_group)
        else:
            out[rows], chosen = _reference(q[rows], cache, layer, batch.slots[i], nsa, seq_gates, scale, given, share_group)
        selections.append(chosen)
    return out, (selections if nsa is not None else None)


def _kernels(q, cache, layer, batch, nsa, gates, scale, selected, share_group):
    """Every sequence adds the same number of tokens: one batched kernel call."""
    from specsa.nsa.kernels.paged import dense_paged, nsa_paged  # needs Triton

    num_seqs, num_queries = len(batch.slots), batch.query_len
    q4 = q.view(num_seqs, num_queries, *q.shape[1:])
    pages = cache.k_pages[layer], cache.v_pages[layer], cache.block_table, batch.seq_slots, batch.seq_lens
    if nsa is None:
        return dense_paged(q4, *pages, scale=scale).view(q.shape), None
    out, selected = nsa_paged(
        q4, *pages, cache.k_cmp[layer], cache.v_cmp[layer], nsa,
        gates=None if gates is None else gates.view(num_seqs, num_queries, *gates.shape[1:]),
        selected=selected, share_group=share_group, query_group=batch.query_group, scale=scale,
    )  # fmt: skip
    return out.view(q.shape), selected


def _reference(q, cache, layer, slot, nsa, gates, scale, selected, share_group):
    """One sequence through readable PyTorch: q [T, Hq, D] at its last T positions."""
    keys, values = cache.keys_values(layer, slot)
    if nsa is None:
        return dense_attention(q, keys, values, scale), None
    k_cmp, v_cmp = cache.compressed(layer, slot)
    result = nsa_attention(
        q[None], keys[None], values[None], nsa, k_cmp=k_cmp[None], v_cmp=v_cmp[None],
        gates=None if gates is None else gates[None], selected=None if selected is None else selected[None],
        share_group=share_group, scale=scale,
    )  # fmt: skip
    return result.out[0], result.selected[0]


def dense_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of q [T, Hq, D] at the last T positions of k, v [S, Hkv, D].
    SDPA's causal kernels, never [T, S] scores: is_causal for a whole prompt, the
    lower-right causal bias for a chunk after a prefix."""
    t, s = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    causal = dict(is_causal=True) if t == s else dict(attn_mask=causal_lower_right(t, s))
    # [1, H, T, D]: SDPA's fused kernels need a batch dimension (3-D inputs fall back to math).
    q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))
    out = nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, **causal)
    return out[0].transpose(0, 1)
