"""The decoder's fused Triton kernels against the PyTorch they replace (the interpreter on
the CPU): the same roundings to the model dtype. On the GPU the rounded residual sum is
bit-exact; Triton's interpreter rounds fp32 -> bf16 toward zero, so on the CPU bf16 results
agree to within a bf16 step."""

from __future__ import annotations

import pytest
import torch

from specsa.config import ModelConfig
from specsa.model.layers import RMSNorm, SwiGLU
from specsa.model.rope import Rotary

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]


def tolerance(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)  # two roundings of a bf16 step


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm(dtype, with_residual):
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(72, 1e-5).to(DEVICE)  # not a power of two
    norm.weight.data = torch.randn(72, generator=gen).to(DEVICE)
    norm = norm.to(dtype)
    x = torch.randn(5, 72, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(5, 72, generator=gen).to(DEVICE, dtype) if with_residual else None
    expected, expected_sum = norm(x, residual)
    out, summed = norm(x, residual, use_kernels=True)
    exact = dtype == torch.float32 or DEVICE == "cuda"
    torch.testing.assert_close(summed, expected_sum, **(dict(atol=0, rtol=0) if exact else tolerance(dtype)))
    torch.testing.assert_close(out, expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_in_place_on_a_packed_projection(dtype):
    """q and k are strided views of one qkv output, as in the model; positions reach 128K."""
    cfg = ModelConfig(vocab_size=8, hidden_size=64, intermediate_size=8, num_layers=1, num_q_heads=6, num_kv_heads=2,
                      head_dim=16, max_position=1 << 17, rope_theta=500000.0)  # fmt: skip
    rotary = Rotary(cfg).to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(4, (6 + 2 + 2) * 16, generator=gen).to(DEVICE, dtype)
    positions = torch.tensor([0, 7, 4099, 131071], device=DEVICE)
    q, k, _ = qkv.split([96, 32, 32], dim=-1)
    q, k = q.view(4, 6, 16), k.view(4, 2, 16)
    expected_q, expected_k = rotary(q, k, positions)
    out_q, out_k = rotary(q, k, positions, use_kernels=True)
    assert out_q.data_ptr() == qkv.data_ptr()  # in place
    torch.testing.assert_close(out_q, expected_q, **tolerance(dtype))
    torch.testing.assert_close(out_k, expected_k, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(dtype):
    torch.manual_seed(2)
    mlp = SwiGLU(32, 1100).to(DEVICE, dtype)  # intermediate: more than one 1024 block, not a multiple
    x = torch.randn(3, 32, device=DEVICE).to(dtype)
    torch.testing.assert_close(mlp(x, use_kernels=True), mlp(x), **tolerance(dtype))
