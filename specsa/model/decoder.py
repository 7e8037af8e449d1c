"""Llama/Qwen2-family causal LM. Parameter names follow Hugging Face's, so a checkpoint's
state dict loads as it is."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from specsa.cache import PagedKVCache, StepBatch
from specsa.config import ModelConfig, NSAConfig, Precision
from specsa.model.attention import Attention
from specsa.model.layers import RMSNorm, SwiGLU
from specsa.model.rope import Rotary


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, nsa: NSAConfig | None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer, nsa)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, batch: StepBatch, cache: PagedKVCache, nsa, **attention):
        """Returns (x, the attention's selection)."""
        attended, selection = self.self_attn(self.input_layernorm(x), cos, sin, batch, cache, nsa, **attention)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), selection


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, nsa: NSAConfig | None):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, nsa) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    """`nsa=None` runs dense attention; otherwise NSA with that configuration.

    `use_kernels`: attention runs the Triton kernels (None: on CUDA only), else the
    reference. `precision`: the class verification may use (`shared`, `reuse`).
    """

    def __init__(self, cfg: ModelConfig, nsa: NSAConfig | None):
        super().__init__()
        self.config = cfg
        self.nsa = nsa
        self.use_kernels: bool | None = None
        self.precision = Precision()
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
    def forward(self, token_ids: Tensor, slots: list[int], query_lens: list[int], cache: PagedKVCache, **run) -> Tensor:
        """Append query_lens[i] tokens to sequence slots[i]; token_ids [N] are flattened in
        that order. Returns the final hidden states [N, hidden]; `logits` maps them."""
        return self.run(token_ids, cache.step(slots, query_lens), cache, **run)

    @torch.inference_mode()
    def run(
        self,
        token_ids: Tensor,
        batch: StepBatch,
        cache: PagedKVCache,
        *,
        draft_nsa: NSAConfig | None = None,
        layers: list[int] | None = None,
        record: list | None = None,
        exact: bool = False,
    ) -> Tensor:
        """The forward pass of a reserved step: device work only (a decode step with the
        kernels can be captured in a CUDA graph). A self-drafter passes `draft_nsa` (a
        cheaper selection budget) and may run only `layers`; what it writes is truncated
        away before verification. `record` collects each layer's selection. `exact`
        ignores the precision class (prefill: it only approximates decode steps)."""
        nsa = draft_nsa or self.nsa
        use_kernels = token_ids.is_cuda if self.use_kernels is None else self.use_kernels
        layers = range(self.config.num_layers) if layers is None else layers
        cos, sin = self.rotary(batch.positions)
        x = self.model.embed_tokens(token_ids)
        precision = Precision() if exact else self.precision
        selection = None
        for index in layers:
            reused = None if precision.refreshes(index, layers[0]) else selection
            x, selection = self.model.layers[index](
                x, cos, sin, batch, cache, nsa, use_kernels=use_kernels, selection=reused,
                share_group=precision.query_share_group,
            )  # fmt: skip
            if record is not None:
                record.append(selection)
        return self.model.norm(x)

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden).float()
