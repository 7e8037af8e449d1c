"""The attention layer of the decoder: projections, RoPE, the KV cache, and NSA or dense
attention over it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specsa.cache import PagedKVCache, StepBatch
from specsa.config import Combine, ModelConfig, NSAConfig
from specsa.model.rope import Rotary
from specsa.nsa.attention import append_step, paged_attention
from specsa.nsa.compression import MLPCompression, mean_compression


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, nsa: NSAConfig | None):
        super().__init__()
        self.layer = layer
        self.num_q_heads, self.num_kv_heads, self.head_dim = cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        # q, k, v (and the gated combination's gate logits) as one matrix: one launch.
        gates = 3 * cfg.num_q_heads if nsa is not None and nsa.combine is Combine.GATED else 0
        self.split_sizes = [cfg.num_q_heads * cfg.head_dim, *[cfg.num_kv_heads * cfg.head_dim] * 2, gates]
        self.qkv_proj = nn.Linear(cfg.hidden_size, sum(self.split_sizes), bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_q_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        if nsa is not None and cfg.cmp_mlp_hidden:
            self.compress_k = MLPCompression(nsa.cmp_block, cfg.head_dim, cfg.cmp_mlp_hidden)
            self.compress_v = MLPCompression(nsa.cmp_block, cfg.head_dim, cfg.cmp_mlp_hidden)
        else:
            self.compress_k = self.compress_v = mean_compression

    def forward(
        self,
        x: Tensor,
        rotary: Rotary,
        batch: StepBatch,
        cache: PagedKVCache,
        nsa: NSAConfig | None,
        *,
        use_kernels: bool,
        selection=None,
        share_group: int = 1,
    ):
        """x [N, hidden] -> ([N, hidden], selection); appends this step's keys and values
        to the cache. `nsa` is this pass's configuration: the layer's own, or a
        self-drafter's cheaper one. `selection` hands in an earlier layer's (`reuse`)."""
        n = x.shape[0]
        q, k, v, gate_logits = self.qkv_proj(x).split(self.split_sizes, dim=-1)
        q, k = rotary(q.view(n, self.num_q_heads, self.head_dim), k.view(n, self.num_kv_heads, self.head_dim),
                      batch.positions, use_kernels=use_kernels)  # fmt: skip
        v = v.view(n, self.num_kv_heads, self.head_dim)
        gates = torch.sigmoid(gate_logits).view(n, self.num_q_heads, 3) if gate_logits.shape[-1] else None
        append_step(cache, self.layer, k, v, batch, self.compress_k, self.compress_v, use_kernels)
        out, selection = paged_attention(q, cache, self.layer, batch, nsa, gates=gates, scale=self.scale,
                                         use_kernels=use_kernels, selection=selection, share_group=share_group)  # fmt: skip
        return self.o_proj(out.reshape(n, -1)), selection
