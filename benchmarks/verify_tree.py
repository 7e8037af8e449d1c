"""Tree verification vs chain verification of the same number of draft tokens, one layer,
on the GPU (random data): what the tree's masks and per-node compressed tokens cost.

    python benchmarks/verify_tree.py --out benchmarks/results/h100/verify_tree.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton
from timing import bench, graphed

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.nsa.kernels.paged import nsa_paged
from specsa.nsa.tree import draft_tree, tree_mask

TREES = {  # each node's parent: a binary tree of 7 nodes plus a root, and 15 + 1
    8: [-1, 0, 0, 1, 1, 2, 2, 3],
    16: [-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="16384,65536")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cfg, hq, hkv, dim = NSAConfig(), 32, 8, 128
    rows = []
    for context in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            for nodes, parents in TREES.items():
                cache = PagedKVCache(num_layers=1, num_kv_heads=hkv, head_dim=dim, max_seqs=batch, max_len=context + nodes,
                                     page_size=cfg.sel_block, nsa=cfg, dtype=torch.bfloat16, device="cuda")  # fmt: skip
                for _ in range(batch):
                    cache.extend(cache.allocate(), context + nodes)
                for buffer in (cache.k_pages, cache.v_pages, cache.k_cmp, cache.v_cmp):
                    buffer.normal_()
                q = torch.randn(batch, nodes, hq, dim, device="cuda", dtype=torch.bfloat16)
                slots = torch.arange(batch, dtype=torch.int32, device="cuda")
                lens = torch.full((batch,), context + nodes, dtype=torch.int32, device="cuda")
                raw = [cache.keys_values(0, b) for b in range(batch)]
                tree = draft_tree(tree_mask(parents), [k for k, _ in raw], [v for _, v in raw], cfg)
                del raw
                call = (q, cache.k_pages[0], cache.v_pages[0], cache.block_table, slots, lens, cache.k_cmp[0], cache.v_cmp[0], cfg)
                row = {"context": context, "batch": batch, "nodes": nodes, "hq": hq, "hkv": hkv, "d": dim}
                row["chain_ms"] = bench(graphed(lambda: nsa_paged(*call)))
                row["tree_ms"] = bench(graphed(lambda: nsa_paged(*call, tree=tree)))
                row["decode_ms"] = bench(graphed(lambda: nsa_paged(q[:, :1], *call[1:5], lens - nodes + 1, *call[6:])))
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"benchmark": "verify_tree", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "date": time.strftime("%Y-%m-%d"), "data": "random",
              "command": "python benchmarks/verify_tree.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v),
              "rows": rows}  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
