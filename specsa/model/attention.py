"""The attention layer of the decoder: projections, RoPE, the KV cache, and NSA or dense
attention over it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from specsa.cache import PagedKVCache
from specsa.config import Combine, ModelConfig, NSAConfig
from specsa.model.rope import apply_rotary
from specsa.nsa.attention import nsa_attend, nsa_decode_batch
from specsa.nsa.compression import MLPCompression, mean_compression


@dataclass
class StepBatch:
    """Which tokens a forward pass appends: sequence i adds query_lens[i] tokens to cache
    slot slots[i], which held starts[i] tokens before. Tokens are flattened in that order."""

    slots: list[int]
    starts: list[int]
    query_lens: list[int]
    # Set when every sequence adds one token and the Triton decode path runs:
    # slots and lengths after this step, [B] int32 on the device.
    decode_slots: Tensor | None = None
    decode_lengths: Tensor | None = None

    def spans(self):
        """(slot, start, first row, last row + 1) for each sequence."""
        row = 0
        for slot, start, n in zip(self.slots, self.starts, self.query_lens):
            yield slot, start, row, row + n
            row += n


def dense_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of q [T, Hq, D] at the last T positions of k, v [S, Hkv, D]."""
    t, s = q.shape[0], k.shape[0]
    causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    out = nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=causal, scale=scale, enable_gqa=True
    )
    return out.transpose(0, 1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, nsa: NSAConfig | None):
        super().__init__()
        self.layer = layer
        self.num_q_heads, self.num_kv_heads, self.head_dim = cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        q_size, kv_size = cfg.num_q_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_size, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_size, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=False)
        if nsa is not None and nsa.combine is Combine.GATED:
            self.g_proj = nn.Linear(cfg.hidden_size, cfg.num_q_heads * 3, bias=False)
        if nsa is not None and cfg.cmp_mlp_hidden:
            self.compress_k = MLPCompression(nsa.cmp_block, cfg.head_dim, cfg.cmp_mlp_hidden)
            self.compress_v = MLPCompression(nsa.cmp_block, cfg.head_dim, cfg.cmp_mlp_hidden)
        else:
            self.compress_k = self.compress_v = mean_compression

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, batch: StepBatch, cache: PagedKVCache, nsa: NSAConfig | None
    ) -> Tensor:
        """x [N, hidden] -> [N, hidden]; appends this step's keys and values to the cache.
        `nsa` is the configuration of this pass: the layer's own, or a self-drafter's cheaper one."""
        n = x.shape[0]
        q = apply_rotary(self.q_proj(x).view(n, self.num_q_heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(n, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        gates = None
        if hasattr(self, "g_proj"):
            gates = torch.sigmoid(self.g_proj(x)).view(n, self.num_q_heads, 3)
        for slot, start, first, last in batch.spans():
            cache.write(self.layer, slot, start, k[first:last], v[first:last])
            if nsa is not None:
                cache.update_compressed(self.layer, slot, start, self.compress_k, self.compress_v)
        if batch.decode_slots is not None:
            out = nsa_decode_batch(q, cache, self.layer, batch.decode_slots, batch.decode_lengths, nsa,
                                   gates=gates, scale=self.scale)  # fmt: skip
            return self.o_proj(out.reshape(n, -1))
        out = torch.empty_like(q)
        for slot, start, first, last in batch.spans():
            keys, values = cache.keys_values(self.layer, slot)
            if nsa is None:
                out[first:last] = dense_attention(q[first:last], keys, values, self.scale)
                continue
            k_cmp, v_cmp = cache.compressed(self.layer, slot)
            out[first:last] = nsa_attend(
                q[first:last],
                keys,
                values,
                k_cmp,
                v_cmp,
                nsa,
                gates=None if gates is None else gates[first:last],
                scale=self.scale,
            ).out
        return self.o_proj(out.reshape(n, -1))
