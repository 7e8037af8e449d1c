"""Triton kernels for the decoder's elementwise steps, one launch each where PyTorch takes
five to ten: residual add + RMSNorm, RoPE on q and k, SiLU·mul. At batch 1 a decode step
is a chain of small kernels, so their count, not their bytes, sets its time. RoPE starts
the chain of attention kernels (PDL, `specsa/launch.py`); the other two sit between
matrix products, which PDL cannot overlap.

Each computes what its PyTorch reference in `layers.py` / `rope.py` computes, with the
same roundings to the model dtype (Hugging Face's order of operations).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from specsa.launch import pdl_options, pdl_prologue


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,  # [N, H]
    residual_ptr,  # [N, H] (HAS_RESIDUAL)
    weight_ptr,  # [H]
    out_ptr,  # [N, H]
    sum_ptr,  # [N, H]: x + residual, the next layer's residual
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0)
    o_h = tl.arange(0, BLOCK)
    m_h = o_h < hidden
    b_x = tl.load(x_ptr + i_n * hidden + o_h, mask=m_h, other=0.0)  # [BLOCK]
    if HAS_RESIDUAL:
        b_x = (b_x.to(tl.float32) + tl.load(residual_ptr + i_n * hidden + o_h, mask=m_h, other=0.0).to(tl.float32))
        b_x = b_x.to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + i_n * hidden + o_h, b_x, mask=m_h)
    b_x32 = b_x.to(tl.float32)
    b_rstd = 1.0 / tl.sqrt(tl.sum(b_x32 * b_x32, 0) / hidden + eps)
    b_normed = (b_x32 * b_rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    b_w = tl.load(weight_ptr + o_h, mask=m_h, other=0.0).to(tl.float32)
    tl.store(out_ptr + i_n * hidden + o_h, (b_normed * b_w).to(out_ptr.dtype.element_ty), mask=m_h)


def add_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """x, residual [N, H] -> (RMSNorm(x + residual), x + residual); no residual: (RMSNorm(x), x)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    summed = x if residual is None else torch.empty_like(x)
    _add_rms_norm_kernel[(x.shape[0],)](
        x, x if residual is None else residual.contiguous(), weight, out, summed, x.shape[1], eps,
        HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(x.shape[1]),
    )  # fmt: skip
    return out, summed


@triton.jit
def _rotary_kernel(
    q_ptr,  # [N, Hq, D], rotated in place
    k_ptr,  # [N, Hkv, D], rotated in place
    positions_ptr,  # [N] int64
    inv_freq_ptr,  # [D/2] fp32
    stride_qn,
    stride_qh,
    stride_kn,
    stride_kh,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    H_PAD: tl.constexpr,  # next power of two of Hq + Hkv
    HALF: tl.constexpr,  # D / 2
    PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    i_n = tl.program_id(0)
    o_j = tl.arange(0, HALF)
    b_angle = tl.load(positions_ptr + i_n).to(tl.float32) * tl.load(inv_freq_ptr + o_j)  # [HALF]
    b_cos, b_sin = tl.cos(b_angle)[None, :], tl.sin(b_angle)[None, :]
    # Rows 0 … Hq-1 are q's heads, Hq … Hq+Hkv-1 k's.
    o_r = tl.arange(0, H_PAD)
    is_q = o_r < HQ
    m_r = (o_r < HQ + HKV)[:, None]
    p_q = q_ptr + i_n * stride_qn + o_r[:, None] * stride_qh + o_j[None, :]
    p_k = k_ptr + i_n * stride_kn + (o_r[:, None] - HQ) * stride_kh + o_j[None, :]
    p_x = tl.where(is_q[:, None], p_q, p_k)  # [H_PAD, HALF] first halves
    b_x1 = tl.load(p_x, mask=m_r, other=0.0)
    b_x2 = tl.load(p_x + HALF, mask=m_r, other=0.0)
    b_x1f, b_x2f = b_x1.to(tl.float32), b_x2.to(tl.float32)
    tl.store(p_x, (b_x1f * b_cos - b_x2f * b_sin).to(b_x1.dtype), mask=m_r)
    tl.store(p_x + HALF, (b_x2f * b_cos + b_x1f * b_sin).to(b_x1.dtype), mask=m_r)


def rotary_(q: Tensor, k: Tensor, positions: Tensor, inv_freq: Tensor) -> None:
    """Rotate q [N, Hq, D] and k [N, Hkv, D] in place (rows may be strided views of one
    projection output; the head dimension must be contiguous)."""
    num_q_heads, num_kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[2]
    if q.stride(2) != 1 or k.stride(2) != 1:
        raise ValueError("rotary_ needs q and k with a contiguous head dimension.")
    _rotary_kernel[(q.shape[0],)](
        q, k, positions, inv_freq, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        HQ=num_q_heads, HKV=num_kv_heads, H_PAD=triton.next_power_of_2(num_q_heads + num_kv_heads), HALF=head_dim // 2,
        **pdl_options(q.device),
    )  # fmt: skip


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,  # [N, 2·I]: gate then up
    out_ptr,  # [N, I]
    intermediate,
    BLOCK: tl.constexpr,
):
    i_n, i_block = tl.program_id(0), tl.program_id(1)
    o_i = i_block * BLOCK + tl.arange(0, BLOCK)
    m_i = o_i < intermediate
    p_gate = gate_up_ptr + i_n * 2 * intermediate + o_i
    b_gate = tl.load(p_gate, mask=m_i, other=0.0).to(tl.float32)  # [BLOCK]
    b_up = tl.load(p_gate + intermediate, mask=m_i, other=0.0).to(tl.float32)
    b_act = (b_gate * tl.sigmoid(b_gate)).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + i_n * intermediate + o_i, (b_act * b_up).to(out_ptr.dtype.element_ty), mask=m_i)


def silu_and_mul(gate_up: Tensor) -> Tensor:
    """gate_up [N, 2·I] -> silu(gate) · up [N, I]."""
    gate_up = gate_up.contiguous()
    num_rows, intermediate = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty(num_rows, intermediate)
    block = min(1024, triton.next_power_of_2(intermediate))
    _silu_and_mul_kernel[(num_rows, triton.cdiv(intermediate, block))](gate_up, out, intermediate, BLOCK=block)
    return out
