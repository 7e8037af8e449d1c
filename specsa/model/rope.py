"""Rotary position embedding (the rotate-half layout of Hugging Face Llama/Qwen2),
with Llama-3 and linear frequency scaling."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from specsa.config import ModelConfig, RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> Tensor:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # Llama 3: leave high frequencies alone, divide low ones by `factor`, blend between.
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, blended)
    return torch.where(wavelen < high_wavelen, inv_freq, scaled)


class Rotary(torch.nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, q: Tensor, k: Tensor, positions: Tensor, *, use_kernels: bool = False) -> tuple[Tensor, Tensor]:
        """q [N, Hq, D], k [N, Hkv, D] at token positions [N], rotated. The kernel rotates
        them in place (one launch); the reference returns new tensors."""
        if use_kernels:
            from specsa.model.kernels import rotary_  # needs Triton

            rotary_(q, k, positions, self.inv_freq)
            return q, k
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # [N, D/2]
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # [N, 1, D]
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
