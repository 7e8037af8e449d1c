"""Timing helpers shared by the kernel benchmarks: medians of CUDA-graph replays, and the
device's copy bandwidth (the roofline every byte count is compared with)."""

from __future__ import annotations

import contextlib

import torch
import triton


def bench(fn, rep: int = 100) -> float:
    """Median milliseconds of fn (triton.testing.do_bench, after warm-up)."""
    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")


def graphed(fn):
    """fn captured in a CUDA graph: what a step costs without launch overhead."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth() -> float:
    """Bytes per second of a 2 GiB device-to-device copy (read + write)."""
    x = torch.empty(1024**3, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
    return 2 * x.numel() * 2 / (ms * 1e-3)


@contextlib.contextmanager
def pdl_disabled():
    """Kernels launched inside run without programmatic dependent launch (to time its effect)."""
    import specsa.launch

    saved = specsa.launch._pdl_supported
    specsa.launch._pdl_supported = lambda device_index: False
    try:
        yield
    finally:
        specsa.launch._pdl_supported = saved
