"""The attention layer of the decoder: projections, RoPE, the KV cache, and NSA or dense
attention over it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specsa.cache import PagedKVCache, StepBatch
from specsa.config import Combine, ModelConfig, NSAConfig
from specsa.model.rope import apply_rotary
from specsa.nsa.attention import append_step, paged_attention
from specsa.nsa.compression import MLPCompression, mean_compression


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
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
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
        q = apply_rotary(self.q_proj(x).view(n, self.num_q_heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(n, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        gates = None
        if hasattr(self, "g_proj"):
            gates = torch.sigmoid(self.g_proj(x)).view(n, self.num_q_heads, 3)
        append_step(cache, self.layer, k, v, batch, self.compress_k, self.compress_v, use_kernels)
        out, selection = paged_attention(q, cache, self.layer, batch, nsa, gates=gates, scale=self.scale,
                                         use_kernels=use_kernels, selection=selection, share_group=share_group)  # fmt: skip
        return self.o_proj(out.reshape(n, -1)), selection
