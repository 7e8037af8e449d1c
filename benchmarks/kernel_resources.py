"""Registers, spills and shared memory of the Triton kernels one `nsa_paged` call launches,
compiled for a GPU architecture on any machine, GPU or not.

The call runs on meta tensors with the launch choices a GPU of `--sms` SMs would get; each
kernel launch is caught, bound as Triton binds it (meta tensors' addresses are 0, so every
pointer counts as 16-byte aligned, as real allocations are) and compiled for `--arch` with
the ptxas in Triton's wheel. A kernel that spills, or holds so many registers that only a
program or two fit an SM, is where to look before spending device time (v12: the select
kernel held 180 registers at 4 warps, two programs an SM).

    python benchmarks/kernel_resources.py --context 65536 --batch 8 --queries 9 --hq 32 --hkv 8 --d 64
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

import specsa.nsa.kernels.paged as paged
from specsa.cache import PagedKVCache
from specsa.config import NSAConfig

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def launches(args: argparse.Namespace) -> list[tuple[JITFunction, tuple, dict]]:
    """Every kernel launch of one `nsa_paged` call at this shape: (kernel, args, kwargs)."""
    caught = []
    run = JITFunction.run
    JITFunction.run = lambda self, *a, grid, warmup, **kw: caught.append((self, a, kw))
    programs_wanted, pdl_options = paged._programs_wanted, paged.pdl_options
    paged._programs_wanted = lambda device: 2 * args.sms  # as `_programs_wanted` on such a GPU
    paged.pdl_options = lambda device: {"PDL": True, "launch_pdl": True} if args.arch >= 90 else {"PDL": False}
    try:
        cfg = NSAConfig()
        cache = PagedKVCache(num_layers=1, num_kv_heads=args.hkv, head_dim=args.d, max_seqs=args.batch,
                             max_len=args.context + 16, page_size=cfg.sel_block, nsa=cfg, dtype=torch.bfloat16,
                             device="meta")  # fmt: skip
        q = torch.empty(args.batch, args.queries, args.hq, args.d, dtype=torch.bfloat16, device="meta")
        slots = torch.empty(args.batch, dtype=torch.int32, device="meta")
        paged.nsa_paged(q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, slots, cache.k_cmp[0],
                        cache.v_cmp[0], cfg)  # fmt: skip
    finally:
        JITFunction.run = run
        paged._programs_wanted, paged.pdl_options = programs_wanted, pdl_options
    return caught


def resources(kernel: JITFunction, args: tuple, kwargs: dict, target: GPUTarget) -> str:
    """`cuobjdump -res-usage` of the kernel compiled for `target` as these arguments bind it."""
    backend = make_backend(target)
    kwargs = {k: v for k, v in kwargs.items() if k != "launch_pdl"}  # a launch option, not a compile one
    bound, specialization, options = create_function_from_signature(kernel.signature, kernel.params, backend)(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", cubin.name], capture_output=True, text=True, check=True)
    return f"{usage.stdout.strip().splitlines()[-1].strip()}  warps {options.num_warps}  dynamic shared {compiled.metadata.shared} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("context", 65536), ("batch", 1), ("queries", 1), ("hq", 32), ("hkv", 8), ("d", 128),
                          ("arch", 90), ("sms", 132)):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    print(f"context {args.context} batch {args.batch} queries {args.queries} Hq {args.hq} Hkv {args.hkv} D {args.d}, "
          f"sm_{args.arch}:")  # fmt: skip
    for kernel, kernel_args, kwargs in launches(args):
        print(f"  {kernel.__name__:28s} {resources(kernel, kernel_args, kwargs, target)}")


if __name__ == "__main__":
    main()
