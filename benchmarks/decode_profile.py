"""One `nsa_paged` layer for one shape — `--queries` T per sequence (1 = decode, γ+1 =
verification) — timed as a CUDA-graph replay with and without programmatic dependent
launch (PDL), and where its GPU time goes, kernel by kernel (torch.profiler, without PDL:
with it, each kernel starts early and waits on chip for the one before, and the profiler
counts that wait as its time; v12, the 1B model's decode step at 64K, batch 8, 16 layers:
the candidates kernel "took" 0.61 ms with PDL, 0.13 without).

Each run also prints a hash of the selection (sorted per query and head) and the output's
sum, so that two specsa trees can be compared on the same shape (A/B): run it once per
tree with that tree first on PYTHONPATH and `--out` the same file; equal hashes mean equal
selections. `--fill zeros` gives every query the same blocks (the cheapest union).

    python benchmarks/decode_profile.py --context 65536 --batch 1 --hq 32 --hkv 8 --d 128 --queries 8
    PYTHONPATH=../other-tree python benchmarks/decode_profile.py --batch 8 --queries 8 --tag other --out ab.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import defaultdict

import torch

import specsa
from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.kernels.paged import nsa_paged
from timing import bench, graphed, pdl_disabled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("context", 65536), ("batch", 1), ("hq", 32), ("hkv", 8), ("d", 128), ("queries", 1), ("steps", 50)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--fill", choices=("normal", "zeros"), default="normal", help="the cache's keys and values")
    parser.add_argument("--tag", default="", help="a name for this tree in --out")
    parser.add_argument("--out", default=None, help="append the result to this file as a JSON line")
    args = parser.parse_args()
    cfg = NSAConfig()
    cache = PagedKVCache(num_layers=1, num_kv_heads=args.hkv, head_dim=args.d, max_seqs=args.batch, max_len=args.context,
                         page_size=cfg.sel_block, nsa=cfg, dtype=torch.bfloat16, device="cuda")  # fmt: skip
    for _ in range(args.batch):
        cache.extend(cache.allocate(), args.context)
    for buffer in (cache.k_pages, cache.v_pages, cache.k_cmp, cache.v_cmp):
        if args.fill == "zeros":
            buffer.zero_()
        else:
            buffer.normal_()
    q = torch.randn(args.batch, args.queries, args.hq, args.d, device="cuda", dtype=torch.bfloat16)
    slots = torch.arange(args.batch, dtype=torch.int32, device="cuda")
    lens = torch.full((args.batch,), args.context, dtype=torch.int32, device="cuda")
    call = lambda: nsa_paged(q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, lens,  # noqa: E731
                                    cache.k_cmp[0], cache.v_cmp[0], cfg)  # fmt: skip
    out, selected = call()
    step_us = 1e3 * bench(graphed(call))
    with pdl_disabled():
        step_us_no_pdl = 1e3 * bench(graphed(call))
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
    selection_hash = hashlib.sha1(selected.sort(-1).values.cpu().numpy().tobytes()).hexdigest()[:12]
    out_sum = float(out.float().sum())
    print(f"context {args.context} batch {args.batch} queries {args.queries} Hq {args.hq} Hkv {args.hkv} D {args.d} "
          f"({args.fill} cache): step {step_us:.1f} µs as a graph replay, {step_us_no_pdl:.1f} without PDL; "
          f"selection {selection_hash}, output sum {out_sum:.6g}; µs per step by kernel, without PDL:")  # fmt: skip
    for name, us in sorted(per_kernel.items(), key=lambda kv: -kv[1]):
        print(f"  {us:8.2f}  {name[:90]}")
    print(f"  {sum(per_kernel.values()):8.2f}  total")
    if args.out:
        row = dict(vars(args), specsa=specsa.__file__, gpu=torch.cuda.get_device_name(), step_us=step_us,
                   step_us_no_pdl=step_us_no_pdl, kernels_us={k: round(v, 2) for k, v in per_kernel.items()},
                   selection_hash=selection_hash, out_sum=out_sum)  # fmt: skip
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
