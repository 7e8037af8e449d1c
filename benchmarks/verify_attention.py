"""One layer of NSA verification attention on the GPU: γ+1 queries per sequence.

Two parts, each timed as CUDA-graph replays (`triton.testing.do_bench` medians):

1. Sparse attention over a given selection layout — captured from SmolLM2 on real text
   (`benchmarks/results/cpu/layouts_smollm2.pt`, remapped to the longer context with its
   overlap kept) or synthetic with pairwise overlap 0.3 / 0.6 / 0.9 — for
   * grouped: the union of a query group's blocks loaded once (specsa's kernel),
   * query-centric: the same kernel with groups of one query (each loads its own blocks),
   * per-query decode: the decode kernel launched once per query (what verifying by
     successive decode steps costs),
   with bandwidth over the union bytes (distinct selected + window pages, K and V).
2. The whole `exact` step (compressed branch, selection, attention) for T queries against
   one decode step and T decode steps, on random keys with queries made alike to a chosen
   degree (`--similarities`); the overlap their own selections reach is recorded beside
   (random data: part 1's captured layouts are where real overlap is measured). The step
   is timed at the kernel's default C (queries per sparse-attention program) and at each
   C the engine's profile tries; `vs_one_decode_profile_c` is the step at the C the
   profile would pick (the fastest on a zero cache), which is what the engine runs.

    python benchmarks/verify_attention.py --out benchmarks/results/h100/verify_attention.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import triton

from timing import bench, copy_bandwidth, graphed

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.kernels.paged import nsa_paged
from specsa.nsa.layout import pairwise_overlap, remap_layout, synthetic_layout
from specsa.orchestrate.profile import QUERY_GROUPS

CAPTURED = Path(__file__).parent / "results" / "cpu" / "layouts_smollm2.pt"


def union_pages(layout: torch.Tensor, context: int, cfg: NSAConfig) -> int:
    """Distinct pages the T queries of each (sequence, head) need: selected ∪ window.
    layout [B, T, H, n] -> total page count."""
    batch, num_queries, heads, _ = layout.shape
    num_blocks = -(-context // cfg.sel_block)
    first_window = max(context - num_queries - cfg.window + 1, 0) // cfg.sel_block
    need = torch.zeros(batch, heads, num_blocks + 1, dtype=torch.bool, device=layout.device)
    index = layout.permute(0, 2, 1, 3).flatten(2).long()  # [B, H, T·n]
    need.scatter_(2, torch.where(index < 0, num_blocks, index), True)
    need[:, :, first_window:num_blocks] = True
    return int(need[:, :, :num_blocks].sum())


class Setup:
    """A one-layer cache of `batch` random sequences of `context` tokens, and T queries."""

    def __init__(self, cfg, hq, hkv, dim, context, batch, num_queries, similarity=0.0, zero_cache=False):
        self.cfg, self.num_queries = cfg, num_queries
        self.cache = PagedKVCache(num_layers=1, num_kv_heads=hkv, head_dim=dim, max_seqs=batch, max_len=context,
                                  page_size=cfg.sel_block, nsa=cfg, dtype=torch.bfloat16, device="cuda")  # fmt: skip
        for _ in range(batch):
            self.cache.extend(self.cache.allocate(), context)
        for x in (self.cache.k_pages, self.cache.v_pages, self.cache.k_cmp, self.cache.v_cmp):
            if zero_cache:
                x.zero_()
            else:
                x.normal_()
        # Adjacent queries of a real model are alike; `similarity` s mixes one shared query
        # into each: q_t = √s·q_shared + √(1-s)·noise_t (s = 0: independent queries).
        shared = torch.randn(batch, 1, hq, dim, device="cuda")
        noise = torch.randn(batch, num_queries, hq, dim, device="cuda")
        self.q = (similarity**0.5 * shared + (1 - similarity) ** 0.5 * noise).to(torch.bfloat16)
        self.slots = torch.arange(batch, dtype=torch.int32, device="cuda")
        self.seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        c = self.cache
        self.pages = (c.k_pages[0], c.v_pages[0], c.block_table)
        self.cmp = (c.k_cmp[0], c.v_cmp[0])

    def grouped(self, selected=None, query_group=None):
        return lambda: nsa_paged(self.q, *self.pages, self.slots, self.seq_lens, *self.cmp, self.cfg,
                                 selected=selected, query_group=query_group)  # fmt: skip

    def per_query_decode(self, selected=None):
        """T decode launches: query t over the first context - T + t + 1 tokens."""
        t_all = self.num_queries

        def run():
            for t in range(t_all):
                lens = self.seq_lens - (t_all - 1 - t)
                nsa_paged(self.q[:, t : t + 1], *self.pages, self.slots, lens, *self.cmp, self.cfg,
                          selected=None if selected is None else selected[:, t : t + 1])  # fmt: skip

        return run


def layouts_for(source, batch, num_queries, hkv, context, cfg, gen):
    """{name: [B, T, Hkv, n] int32 layout on the GPU} for the captured and synthetic sources."""
    num_blocks = -(-context // cfg.sel_block)
    out = {}
    for overlap in (0.3, 0.6, 0.9):
        out[f"synthetic-{overlap}"] = torch.stack(
            [synthetic_layout(num_queries, hkv, cfg.num_selected, num_blocks, overlap, gen) for _ in range(batch)]
        )
    if source is not None:
        samples, layers = source["layouts"].shape[:2]
        picked = []
        for b in range(batch):  # KV heads from consecutive layers of one sample: real layouts, no repeats
            sample = b % samples
            heads = torch.cat([source["layouts"][sample, (b + i) % layers, :num_queries] for i in range(-(-hkv // source["layouts"].shape[3]))], 1)
            picked.append(remap_layout(heads[:, :hkv].long(), source["num_blocks"][sample], num_blocks, gen))
        out["smollm2-captured"] = torch.stack(picked)
    return {name: layout.to(torch.int32).cuda() for name, layout in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", default="2,4,8,16,32,64", help="γ+1 values")
    parser.add_argument("--contexts", default="16384,32768,65536")
    parser.add_argument("--dims", default="64,128")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--similarities", default="0,0.9,0.98", help="query similarity for the whole exact step")
    parser.add_argument("--exact-only", action="store_true", help="only the whole-step part")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cfg, hq, hkv = NSAConfig(), 32, 8
    source = torch.load(CAPTURED) if CAPTURED.exists() else None
    gen = torch.Generator().manual_seed(0)
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; captured layouts: {source is not None}", flush=True)
    rows = []
    for dim in map(int, args.dims.split(",")):
        for context in map(int, args.contexts.split(",")):
            for batch in map(int, args.batches.split(",")):
                one = Setup(cfg, hq, hkv, dim, context, batch, 1)
                decode_ms = bench(graphed(one.grouped()))
                del one
                for num_queries in map(int, args.queries.split(",")):
                    base = {"d": dim, "context": context, "batch": batch, "queries": num_queries}
                    # The engine's profile times each step with the kernel's default C and with
                    # every C of QUERY_GROUPS below T on a zero cache, and runs the fastest.
                    groups = [None, *(c for c in QUERY_GROUPS if c < num_queries)]
                    zeros = Setup(cfg, hq, hkv, dim, context, batch, num_queries, zero_cache=True)
                    zero_cache_ms = {c: bench(graphed(zeros.grouped(query_group=c))) for c in groups}
                    profiled = min(zero_cache_ms, key=zero_cache_ms.get)
                    del zeros
                    for similarity in map(float, args.similarities.split(",")):
                        setup = Setup(cfg, hq, hkv, dim, context, batch, num_queries, similarity)
                        _, chosen = setup.grouped()()
                        by_group = {str(c or "default"): bench(graphed(setup.grouped(query_group=c))) for c in groups}
                        full = dict(base, part="exact step", similarity=similarity,
                                    overlap=sum(pairwise_overlap(x) for x in chosen.long().cpu()) / batch,
                                    decode_1_ms=decode_ms, grouped_ms=by_group["default"],
                                    grouped_ms_by_query_group=by_group, profile_query_group=profiled,
                                    per_query_decode_ms=bench(graphed(setup.per_query_decode())))  # fmt: skip
                        full["vs_one_decode"] = full["grouped_ms"] / decode_ms
                        full["vs_one_decode_profile_c"] = by_group[str(profiled or "default")] / decode_ms
                        full["speedup_vs_per_query"] = full["per_query_decode_ms"] / full["grouped_ms"]
                        rows.append(full)
                        print(json.dumps(full), flush=True)
                    if args.exact_only:
                        continue
                    for name, layout in layouts_for(source, batch, num_queries, hkv, context, cfg, gen).items():
                        pages = union_pages(layout, context, cfg)
                        row = dict(base, part="attention", layout=name, union_pages=pages,
                                   grouped_ms=bench(graphed(setup.grouped(layout))),
                                   query_centric_ms=bench(graphed(setup.grouped(layout, query_group=1))),
                                   per_query_decode_ms=bench(graphed(setup.per_query_decode(layout))))  # fmt: skip
                        union_bytes = pages * cfg.sel_block * dim * 2 * 2
                        row["union_gbps"] = union_bytes / (row["grouped_ms"] * 1e-3) / 1e9
                        row["pct_copy_bw"] = 100 * row["union_gbps"] * 1e9 / bandwidth
                        row["speedup_vs_per_query"] = row["per_query_decode_ms"] / row["grouped_ms"]
                        row["speedup_vs_query_centric"] = row["query_centric_ms"] / row["grouped_ms"]
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                    del setup
                    torch.cuda.empty_cache()
    result = {
        "benchmark": "verify_attention",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "shape": {"hq": hq, "hkv": hkv},
        "nsa": {k: getattr(v, "value", v) for k, v in vars(cfg).items()},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "command": "python benchmarks/verify_attention.py " + " ".join(
            f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v
        ),
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
