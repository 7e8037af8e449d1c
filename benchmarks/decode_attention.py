"""One layer of NSA decode attention on the GPU: the Triton path vs dense SDPA decode on
the same cache, and the PyTorch reference, at real shapes. Both NSA and SDPA are timed
as CUDA-graph replays (what the decode loop runs); NSA eager time is reported beside.

Two graph timings per case: one layer per graph (`nsa_ms`, `sdpa_ms`), which includes the
graph's own launch, and `--layers` layers per graph, each with its own cache, divided by
the layer count (`*_ms_per_layer`): a decode step replays one graph for all its layers,
so that is what a layer costs inside a step.

For each (heads, head dim, context, batch) it checks the kernel against the reference
(given the kernel's own selection, so bf16 near-ties in the ranking do not count as
errors; the selection agreement is reported apart), then times with
`triton.testing.do_bench` (median). Bytes are those the step must read: the compressed
tokens, the union of selected blocks and window, as K and V, for every sequence.

    python benchmarks/decode_attention.py --out benchmarks/results/h100/decode_attention.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton

from timing import bench, copy_bandwidth, graphed, pdl_disabled

from specsa.cache import PagedKVCache
from specsa.config import Combine, NSAConfig
from specsa.nsa.kernels.paged import nsa_paged
from specsa.nsa.reference import nsa_attention

SHAPES = [(32, 8, 64), (32, 8, 128), (64, 4, 128)]  # (Hq, Hkv, D)


def step_bytes(cfg: NSAConfig, context: int, selected: torch.Tensor, kv_heads: int, dim: int, batch: int) -> int:
    """Bytes one decode step must read: the compressed keys (and values, gated: `merged`
    uses the compressed branch only to select) plus the distinct selected/window blocks."""
    t = context - 1
    first = max(t - cfg.window + 1, 0)
    window_tokens = t - first + 1
    per_head_tokens = []
    for b in range(batch):
        for h in range(kv_heads):
            blocks = {int(x) for x in selected[b, h].tolist() if x >= 0}
            tokens = sum(min(cfg.sel_block, context - j * cfg.sel_block) for j in blocks)
            outside = sum(1 for p in range(first, t + 1) if p // cfg.sel_block not in blocks)
            per_head_tokens.append(tokens + min(outside, window_tokens))
    cmp_tokens = cfg.num_cmp_tokens(context) * batch * kv_heads
    cmp_reads = 1 if cfg.combine is Combine.MERGED else 2
    return 2 * dim * (2 * sum(per_head_tokens) + cmp_reads * cmp_tokens)  # bf16


def run_case(cfg, hq, hkv, dim, context, batch, layers: int, check: bool) -> dict:
    device = "cuda"
    cache = PagedKVCache(num_layers=layers, num_kv_heads=hkv, head_dim=dim, max_seqs=batch, max_len=context,
                         page_size=cfg.sel_block, nsa=cfg, dtype=torch.bfloat16, device=device)  # fmt: skip
    for _ in range(batch):
        cache.extend(cache.allocate(), context)
    cache.k_pages.normal_()
    cache.v_pages.normal_()
    cache.k_cmp.normal_()
    cache.v_cmp.normal_()
    q = torch.randn(batch, 1, hq, dim, device=device, dtype=torch.bfloat16)
    slots = torch.arange(batch, dtype=torch.int32, device=device)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    args = (q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, seq_lens, cache.k_cmp[0], cache.v_cmp[0], cfg)
    out, selected = nsa_paged(*args)
    out, selected = out[:, 0], selected[:, 0]
    row = {"hq": hq, "hkv": hkv, "d": dim, "context": context, "batch": batch, "layers_per_graph": layers}

    if check:  # first sequence against the reference, in float32
        k, v = (x.float() for x in cache.keys_values(0, 0))
        k_cmp, v_cmp = (x.float() for x in cache.compressed(0, 0))
        qf = q[:1].float()
        own = nsa_attention(qf, k[None], v[None], cfg, k_cmp=k_cmp[None], v_cmp=v_cmp[None], selected=selected[0, None, None])
        ref = nsa_attention(qf, k[None], v[None], cfg, k_cmp=k_cmp[None], v_cmp=v_cmp[None])
        row["rel_error"] = float((out[0].float() - own.out[0, 0]).norm() / own.out[0, 0].norm())
        chosen, expected = selected[0], ref.selected[0, 0]
        row["selection_agreement"] = float(
            sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(chosen, expected)) / expected.numel()
        )
        ref_ms = triton.testing.do_bench(
            lambda: nsa_attention(q[:1], *(x[None] for x in cache.keys_values(0, 0)), cfg,
                                  k_cmp=cache.compressed(0, 0)[0][None], v_cmp=cache.compressed(0, 0)[1][None]),
            warmup=1, rep=20, return_mode="median")  # fmt: skip
        row["reference_ms_batch1"] = ref_ms

    row["nsa_eager_ms"] = bench(lambda: nsa_paged(*args))
    step = graphed(lambda: nsa_paged(*args))
    row["nsa_ms"], row["nsa_ms_again"] = bench(step), bench(step)
    with pdl_disabled():  # the same step without programmatic dependent launch
        row["nsa_ms_no_pdl"] = bench(graphed(lambda: nsa_paged(*args)))
    layer_args = [(q, cache.k_pages[i], cache.v_pages[i], *args[3:6], cache.k_cmp[i], cache.v_cmp[i], cfg)
                  for i in range(layers)]  # fmt: skip
    row["nsa_ms_per_layer"] = bench(graphed(lambda: [nsa_paged(*a) for a in layer_args])) / layers
    row["bytes"] = step_bytes(cfg, context, selected, hkv, dim, batch)
    row["nsa_gbps"] = row["bytes"] / (min(row["nsa_ms"], row["nsa_ms_again"]) * 1e-3) / 1e9
    del cache, step, layer_args

    k_dense = torch.randn(layers, batch, hkv, context, dim, device=device, dtype=torch.bfloat16)
    v_dense = torch.randn_like(k_dense)
    q4 = q.transpose(1, 2)
    sdpa = lambda i: torch.nn.functional.scaled_dot_product_attention(q4, k_dense[i], v_dense[i], enable_gqa=True)  # noqa: E731
    row["sdpa_ms"] = bench(graphed(lambda: sdpa(0)))
    row["sdpa_ms_per_layer"] = bench(graphed(lambda: [sdpa(i) for i in range(layers)])) / layers
    row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["nsa_ms"]
    row["speedup_vs_sdpa_per_layer"] = row["sdpa_ms_per_layer"] / row["nsa_ms_per_layer"]
    del k_dense, v_dense
    torch.cuda.empty_cache()
    if hq // hkv >= 16 and batch == 1:  # fla's NSA runs only there; its wheels travel in .whl/
        for given in (True, False):
            try:
                from fla_nsa import time_fla_nsa

                fla = time_fla_nsa(batch, context, hq, hkv, dim, given_indices=given)
            except ImportError as error:
                print(f"fla not timed: {error}")
                return row
            row["fla_given_indices_ms" if given else "fla_full_ms"] = fla.get("ms_graph") or fla.get("ms")
            row["fla_version"] = fla.get("fla_version")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="4096,16384,65536,131072")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--shapes", default=",".join(f"{hq}/{hkv}/{d}" for hq, hkv, d in SHAPES), help="Hq/Hkv/D,…")
    parser.add_argument("--layers", type=int, default=8, help="layers per graph for the per-layer timing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cfg = NSAConfig()
    rows = []
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    for hq, hkv, dim in (map(int, shape.split("/")) for shape in args.shapes.split(",")):
        for context in map(int, args.contexts.split(",")):
            for batch in map(int, args.batches.split(",")):
                layer_bytes = batch * context * hkv * dim * 2 * 2  # K and V in bf16, paged or dense
                layers = min(args.layers, int(30e9 // layer_bytes))
                if layers < 1:
                    continue
                row = run_case(cfg, hq, hkv, dim, context, batch, layers, check=batch == 1)
                row["pct_copy_bw"] = 100 * row["nsa_gbps"] * 1e9 / bandwidth
                rows.append(row)
                print(
                    f"Hq{hq:3d} Hkv{hkv} D{dim:3d} ctx{context:7d} B{batch:3d}  nsa {row['nsa_ms']:.4f}/{row['nsa_ms_again']:.4f} ms"
                    f" (eager {row['nsa_eager_ms']:.3f}, no PDL {row['nsa_ms_no_pdl']:.4f})"
                    f" ({row['nsa_gbps']:.0f} GB/s, {row['pct_copy_bw']:.0f}%)  sdpa {row['sdpa_ms']:.4f} ms"
                    f"  x{row['speedup_vs_sdpa']:.2f}  per layer of {layers}: nsa {row['nsa_ms_per_layer']:.4f} sdpa"
                    f" {row['sdpa_ms_per_layer']:.4f} x{row['speedup_vs_sdpa_per_layer']:.2f}"
                    + (f"  fla {row.get('fla_full_ms')} (given idx {row.get('fla_given_indices_ms')})" if "fla_full_ms" in row else "")
                    + (f"  err {row['rel_error']:.1e} sel {row['selection_agreement']:.3f} ref {row['reference_ms_batch1']:.3f} ms"
                       if "rel_error" in row else ""),  # fmt: skip
                    flush=True,
                )
    result = {
        "benchmark": "decode_attention",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "nsa": {k: getattr(v, "value", v) for k, v in vars(cfg).items()},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "command": "python benchmarks/decode_attention.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
