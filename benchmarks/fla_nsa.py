"""NSA attention from flash-linear-attention (`fla`, Triton), timed at decode shapes.

fla is not a dependency of specsa: it comes from the wheels in `.whl/` (fla-core 0.6.0 holds
`fla.ops`; flash-linear-attention 0.6.0 only adds `fla.layers`/`fla.models`), installed with

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python benchmarks/fla_nsa.py

fla 0.6.0 takes queries shorter than keys: q [B, TQ, HQ, D] are the last TQ positions of
k/v [B, TK, H, D] (`Q_OFFSET = TK - TQ` in its kernels), so the timed calls are faithful
decode (TQ=1) and verify (TQ=T) calls, never a full-context q. fla's NSA has compression
block = stride = selection block (`block_size`, mean pooling) and needs HQ/H a power of 2 >= 16.

What is timed (do_bench, warmup 25, rep 100, median; "ms" eager, "ms_graph" CUDA-graph replay):
- given_indices=True: only the selected-block attention, `ParallelNSAFunction.apply` (what
  `parallel_nsa` calls), on random causal indices [B, TQ, H, S] int32 that always hold the
  local block. (`parallel_nsa(block_indices=...)` would also mean-pool all of K and V first.)
- given_indices=False: the three gated branches from fla's own kernels, as a decode step
  would run them with the compressed K/V cached (mean-pooled once, outside the timing):
  `parallel_nsa_compression` + `parallel_nsa_topk` + selected attention, plus the window
  branch with `attn_decoding_one_step(window_size=window)` once per query (fla's
  `parallel_nsa` runs the window through flash_attn, absent on the GPU machine), then the gated
  sum. "ms_api" is the public `parallel_nsa(g_cmp, g_slc, window_size=0)` call, which also
  mean-pools the whole K/V cache every call and has no window branch.
"""

from __future__ import annotations

import json

import torch
import triton

DEVICE, DTYPE = "cuda", torch.bfloat16  # the GPU run; a CPU check under TRITON_INTERPRET=1 swaps them


def _retune(*kernels) -> None:
    """Forget autotuned configs (fla's keys ignore sequence lengths), so each shape tunes anew."""
    from triton.runtime.autotuner import Autotuner

    for k in kernels:
        while k is not None and not isinstance(k, Autotuner):
            k = getattr(k, "fn", None)
        if k is not None:
            k.cache.clear()


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _graph_bench(fn) -> float | None:
    try:
        fn()  # compile and autotune outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return _bench(graph.replay)
    except Exception:  # noqa: BLE001 - graph capture is a bonus number
        return None


def _random_indices(b, tq, h, context, block_size, block_count, device) -> torch.Tensor:
    """[B, TQ, H, S] int32: the query's own block plus S-1 distinct random earlier blocks."""
    rows = []
    for t in range(tq):
        own = (context - tq + t) // block_size
        if own < block_count - 1:
            raise ValueError(f"context {context} too short for {block_count} blocks of {block_size}")
        rest = torch.rand(b, h, own, device=device).argsort(-1)[..., : block_count - 1]
        rows.append(torch.cat([rest, torch.full_like(rest[..., :1], own)], -1).sort(-1).values)
    return torch.stack(rows, 1).to(torch.int32).contiguous()


def time_fla_nsa(batch: int, context: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                 num_queries: int = 1, given_indices: bool = False, block_size: int = 64,
                 block_count: int = 16, window: int = 512) -> dict:  # fmt: skip
    g = num_q_heads // num_kv_heads
    if num_q_heads % num_kv_heads or g < 16 or g & (g - 1):
        raise ValueError(f"fla NSA needs Hq/Hkv a power of 2 >= 16, got {num_q_heads}/{num_kv_heads}")
    import fla
    from fla.ops.attn.decoding import attn_decoding_one_step, naive_attn_decoding_kernel
    from fla.ops.nsa.compression import parallel_nsa_compression, parallel_nsa_compression_fwd_kernel
    from fla.ops.nsa.parallel import (ParallelNSAFunction, parallel_nsa, parallel_nsa_fwd_kernel,
                                      parallel_nsa_kernel_topk, parallel_nsa_topk)  # fmt: skip
    from fla.ops.utils.pooling import mean_pooling

    b, c, t, hq, h, d, bs, s = batch, context, num_queries, num_q_heads, num_kv_heads, head_dim, block_size, block_count
    out = {"fla_version": fla.__version__, "batch": b, "context": c, "heads": f"{hq}/{h}", "head_dim": d,
           "num_queries": t, "given_indices": given_indices, "block_size": bs, "block_count": s, "window": window}  # fmt: skip
    try:
        _retune(parallel_nsa_fwd_kernel, parallel_nsa_kernel_topk, parallel_nsa_compression_fwd_kernel,
                naive_attn_decoding_kernel)
        with torch.inference_mode():
            dev, dt, scale = DEVICE, DTYPE, d**-0.5
            q = torch.randn(b, t, hq, d, device=dev, dtype=dt)
            k, v = (torch.randn(b, c, h, d, device=dev, dtype=dt) for _ in range(2))
            if given_indices:
                idx = _random_indices(b, t, h, c, bs, s, dev)
                out["what"] = f"selected-block attention only (ParallelNSAFunction), {s} given blocks of {bs}"
                fn = lambda: ParallelNSAFunction.apply(q, k, v, idx, s, bs, scale, None)  # noqa: E731
            else:
                if not 0 < window <= c - t + 1:
                    raise ValueError(f"window {window} must be in [1, context - num_queries + 1]")
                k_cmp, v_cmp = mean_pooling(k, bs), mean_pooling(v, bs)  # the cached compressed K/V
                g_cmp, g_slc, g_swa = (torch.rand(b, t, hq, device=dev, dtype=dt) for _ in range(3))
                kf, vf, qs = k.view(1, b * c, h, d), v.view(1, b * c, h, d), [q[:, j][None].contiguous() for j in range(t)]
                # one sequence per batch row, each ending right after query j's position
                cus = [torch.tensor([0] + [i * c + c - t + j + 1 for i in range(b)], device=dev) for j in range(t)]

                def fn():
                    o_cmp, lse = parallel_nsa_compression(q, k_cmp, v_cmp, TK=c, block_size=bs, scale=scale)
                    idx = parallel_nsa_topk(q, k_cmp, TK=c, lse=lse, block_counts=s, block_size=bs, scale=scale)
                    o = ParallelNSAFunction.apply(q, k, v, idx, s, bs, scale, None) * g_slc[..., None]
                    o_swa = torch.stack([attn_decoding_one_step(qs[j], kf, vf, scale=scale, cu_seqlens=cus[j],
                                                                window_size=window)[0] for j in range(t)], 1)  # fmt: skip
                    return o + o_cmp * g_cmp[..., None] + o_swa * g_swa[..., None]

                out["what"] = (f"gated compressed (fla top-k on mean-pooled blocks of {bs}) + {s} selected blocks "
                               f"+ window {window} (attn_decoding_one_step per query); cached k_cmp/v_cmp")  # fmt: skip
                api = lambda: parallel_nsa(q, k, v, g_cmp=g_cmp, g_slc=g_slc, block_counts=s, block_size=bs)  # noqa: E731
                out["ms_api"] = _bench(api)
            out["ms"] = _bench(fn)
            out["ms_graph"] = _graph_bench(fn)
    except Exception as e:  # noqa: BLE001 - report what fla refused, keep going
        out.update(ms=None, error=f"{type(e).__name__}: {e}")
    return out


if __name__ == "__main__":
    for context in (16384, 65536):
        for num_queries in (1, 8):
            for given in (True, False):
                print(json.dumps(time_fla_nsa(1, context, 64, 4, 128, num_queries, given_indices=given)), flush=True)
