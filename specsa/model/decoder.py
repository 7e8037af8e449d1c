"""Llama/Qwen2-family causal LM. Parameter names follow Hugging Face's, so a checkpoint's
state dict loads as it is."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specsa.cache import PagedKVCache
from specsa.config import ModelConfig, NSAConfig
from specsa.model.attention import Attention, StepBatch
from specsa.model.layers import RMSNorm, SwiGLU
from specsa.model.rope import Rotary


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, nsa: NSAConfig | None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer, nsa)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, batch: StepBatch, cache: PagedKVCache, nsa: NSAConfig | None
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, cache, nsa)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, nsa: NSAConfig | None):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, nsa) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    """`nsa=None` runs dense attention; otherwise NSA with that configuration.

    `decode_kernels`: decode steps (one new token per sequence) run the Triton kernels;
    on by default on CUDA. Prefill and verification run the reference for now.
    """

    def __init__(self, cfg: ModelConfig, nsa: NSAConfig | None):
        super().__init__()
        self.config = cfg
        self.nsa = nsa
        self.decode_kernels: bool | None = None  # None: on CUDA only
        self.model = Backbone(cfg, nsa)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = Rotary(cfg)

    def new_cache(self, max_seqs: int, max_len: int) -> PagedKVCache:
        weight = self.model.embed_tokens.weight
        return PagedKVCache(
            num_layers=self.config.num_layers,
            num_kv_heads=self.config.num_kv_heads,
            head_dim=self.config.head_dim,
            max_seqs=max_seqs,
            max_len=max_len,
            page_size=self.nsa.sel_block if self.nsa else 64,
            nsa=self.nsa,
            dtype=weight.dtype,
            device=weight.device,
        )

    @torch.inference_mode()
    def forward(
        self,
        token_ids: Tensor,
        slots: list[int],
        query_lens: list[int],
        cache: PagedKVCache,
        *,
        draft_nsa: NSAConfig | None = None,
        layers: list[int] | None = None,
    ) -> Tensor:
        """Append query_lens[i] tokens to sequence slots[i]; token_ids [N] are flattened in
        that order. Returns the final hidden states [N, hidden]; `logits` maps them.

        A self-drafter passes `draft_nsa` (a cheaper selection budget) and may run only
        `layers`; what it writes to the cache is truncated away before verification.
        """
        starts = [cache.extend(slot, n) for slot, n in zip(slots, query_lens)]
        batch = StepBatch(slots, starts, query_lens)
        nsa = draft_nsa or self.nsa
        use_kernels = token_ids.is_cuda if self.decode_kernels is None else self.decode_kernels
        if use_kernels and nsa is not None and all(n == 1 for n in query_lens):
            batch.decode_slots = torch.tensor(slots, dtype=torch.int32, device=token_ids.device)
            batch.decode_lengths = torch.tensor([s + 1 for s in starts], dtype=torch.int32, device=token_ids.device)
        positions = torch.cat(
            [torch.arange(start, start + n, device=token_ids.device) for start, n in zip(starts, query_lens)]
        )
        cos, sin = self.rotary(positions)
        x = self.model.embed_tokens(token_ids)
        for index in range(self.config.num_layers) if layers is None else layers:
            x = self.model.layers[index](x, cos, sin, batch, cache, nsa)
        return self.model.norm(x)

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden).float()
