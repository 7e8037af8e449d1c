"""Programmatic dependent launch (PDL, Hopper and later) for the Triton kernels of a step.

A decode step at batch 1 is a chain of small dependent kernels; with PDL a kernel is
launched while its predecessor still runs and waits on chip (`gdc_wait`) until the
predecessor's writes are visible, so the launch latency between them is hidden. Every
kernel waits before it touches memory, so the order of effects is the stream's.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@functools.cache
def _pdl_supported(device_index: int) -> bool:
    """Hopper or later, and a Triton that has PDL (gdc_* and `launch_pdl` came together)."""
    cuda = getattr(getattr(tl, "extra", None), "cuda", None)
    if os.environ.get("TRITON_INTERPRET") == "1" or not hasattr(cuda, "gdc_wait"):
        return False
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_options(device: torch.device) -> dict:
    """Launch keyword arguments for a kernel with a `PDL: tl.constexpr` parameter."""
    if device.type == "cuda" and _pdl_supported(device.index or 0):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


@triton.jit
def pdl_prologue(PDL: tl.constexpr):
    """First statement of a PDL kernel: wait for the kernel before, let the next launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
