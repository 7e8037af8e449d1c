"""The non-attention layers of a Llama/Qwen2 decoder. Each runs readable PyTorch, or with
`use_kernels` one fused Triton launch (`kernels.py`) computing the same."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor, residual: Tensor | None = None, *, use_kernels: bool = False) -> tuple[Tensor, Tensor]:
        """x, residual [N, H] -> (RMSNorm(x + residual), x + residual): the residual add
        of the layer before, fused as in vLLM. Without a residual, x is the residual."""
        if use_kernels:
            from specsa.model.kernels import add_rms_norm  # needs Triton

            return add_rms_norm(x, residual, self.weight, self.eps)
        if residual is not None:
            x = x + residual
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype), x


class SwiGLU(nn.Module):
    """gate_proj and up_proj are one matrix [2·I, H] (the checkpoint's two, stacked)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor, *, use_kernels: bool = False) -> Tensor:
        gate_up = self.gate_up_proj(x)
        if use_kernels:
            from specsa.model.kernels import silu_and_mul  # needs Triton

            return self.down_proj(silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(nn.functional.silu(gate) * up)
