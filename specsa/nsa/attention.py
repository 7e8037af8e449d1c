"""The one NSA entry point the model calls, for one sequence at a time.

Today it runs the reference operators; the Triton kernels plug in here, behind the same
arguments, on CUDA.
"""

from __future__ import annotations

from torch import Tensor

from specsa.config import NSAConfig
from specsa.nsa.reference import NSAOutput, nsa_attention


def nsa_attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cmp: Tensor,
    v_cmp: Tensor,
    cfg: NSAConfig,
    *,
    gates: Tensor | None,
    scale: float,
) -> NSAOutput:
    """q [T, Hq, D] at the last T positions of k, v [S, Hkv, D]; k_cmp, v_cmp [Nc, Hkv, D]
    from the cache; gates [T, Hq, 3] or None. Returns out [T, Hq, D], selected [T, Hkv, n]."""
    result = nsa_attention(
        q[None],
        k[None],
        v[None],
        cfg,
        k_cmp=k_cmp[None],
        v_cmp=v_cmp[None],
        gates=None if gates is None else gates[None],
        scale=scale,
    )
    return NSAOutput(result.out[0], result.selected[0])
