"""Llama/Qwen2-family causal LM. Parameter names follow Hugging Face's, except that the
projections read by one matrix product are stacked (`pack_checkpoint` maps a checkpoint's
state dict)."""

from __future__ import annotations

import re

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

    def forward(self, x: Tensor, residual: Tensor | None, rotary: Rotary, batch: StepBatch, cache: PagedKVCache, nsa,
                *, use_kernels: bool, **attention):  # fmt: skip
        """Returns (the MLP's output, the residual stream before it, the attention's
        selection): the residual add is fused into the next RMSNorm."""
        hidden, residual = self.input_layernorm(x, residual, use_kernels=use_kernels)
        hidden, selection = self.self_attn(hidden, rotary, batch, cache, nsa, use_kernels=use_kernels, **attention)
        hidden, residual = self.post_attention_layernorm(hidden, residual, use_kernels=use_kernels)
        return self.mlp(hidden, use_kernels=use_kernels), residual, selection


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
        x, residual = self.model.embed_tokens(token_ids), None
        precision = Precision() if exact else self.precision
        selection = None
        for index in layers:
            reused = None if precision.refreshes(index, layers[0]) else selection
            x, residual, selection = self.model.layers[index](
                x, residual, self.rotary, batch, cache, nsa, use_kernels=use_kernels, selection=reused,
                share_group=precision.query_share_group,
            )  # fmt: skip
            if record is not None:
                record.append(selection)
        return self.model.norm(x, residual, use_kernels=use_kernels)[0]

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden).float()


# A stacked parameter and the checkpoint's parameters it stacks, in order (g_proj, the gated
# combination's gates, only in checkpoints trained with NSA).
PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj", "g_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_OPTIONAL = {"g_proj"}


def pack_checkpoint(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face state dict with its stacked projections stacked. A set with a
    required part missing is left as it is (the loader then reports the names)."""
    state = dict(state)
    pattern = re.compile(r"(.*\.)(" + "|".join(p for parts in PACKED.values() for p in parts) + r")\.weight$")
    prefixes = {match[1] for key in state if (match := pattern.match(key))}
    for prefix in sorted(prefixes):
        for packed, parts in PACKED.items():
            present = [p for p in parts if f"{prefix}{p}.weight" in state]
            if not present or any(p not in present for p in parts if p not in _OPTIONAL):
                continue
            weights = [state.pop(f"{prefix}{p}.weight") for p in present]
            state[f"{prefix}{packed}.weight"] = torch.cat(weights)
            biases = [state.pop(f"{prefix}{p}.bias", None) for p in present]
            if any(b is not None for b in biases):  # a part without a bias adds zero
                state[f"{prefix}{packed}.bias"] = torch.cat(
                    [w.new_zeros(w.shape[0]) if b is None else b for w, b in zip(weights, biases)]
                )
    return state
