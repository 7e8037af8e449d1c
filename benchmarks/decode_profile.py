"""Where a decode or verification step's GPU time goes, kernel by kernel (torch.profiler),
for one shape: `--queries` T per sequence (1 = decode, γ+1 = verification). Kernels run
without programmatic dependent launch here: with it, each kernel starts early and waits
on chip for the one before, and the profiler counts that wait as its time (v12, the 1B
model's decode step at 64K, batch 8, 16 layers: the candidates kernel "took" 0.61 ms with
PDL, 0.13 without).

    python benchmarks/decode_profile.py --context 65536 --batch 1 --hq 32 --hkv 8 --d 128 --queries 8
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.kernels.paged import nsa_paged
from timing import pdl_disabled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("context", 65536), ("batch", 1), ("hq", 32), ("hkv", 8), ("d", 128), ("queries", 1), ("steps", 50)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    cfg = NSAConfig()
    cache = PagedKVCache(num_layers=1, num_kv_heads=args.hkv, head_dim=args.d, max_seqs=args.batch, max_len=args.context,
                         page_size=cfg.sel_block, nsa=cfg, dtype=torch.bfloat16, device="cuda")  # fmt: skip
    for _ in range(args.batch):
        cache.extend(cache.allocate(), args.context)
    for buffer in (cache.k_pages, cache.v_pages, cache.k_cmp, cache.v_cmp):
        buffer.normal_()
    q = torch.randn(args.batch, args.queries, args.hq, args.d, device="cuda", dtype=torch.bfloat16)
    slots = torch.arange(args.batch, dtype=torch.int32, device="cuda")
    lens = torch.full((args.batch,), args.context, dtype=torch.int32, device="cuda")
    call = lambda: nsa_paged(q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, lens,  # noqa: E731
                                    cache.k_cmp[0], cache.v_cmp[0], cfg)  # fmt: skip
    with pdl_disabled():
        for _ in range(10):
            call()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                call()
            torch.cuda.synchronize()
    per_kernel = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] += event.device_time_total / args.steps
    print(f"context {args.context} batch {args.batch} queries {args.queries} Hq {args.hq} Hkv {args.hkv} D {args.d}: "
          "µs per step, without PDL")  # fmt: skip
    for name, us in sorted(per_kernel.items(), key=lambda kv: -kv[1]):
        print(f"  {us:8.2f}  {name[:90]}")
    print(f"  {sum(per_kernel.values()):8.2f}  total")


if __name__ == "__main__":
    main()
