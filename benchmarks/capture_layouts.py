"""Capture real NSA selection layouts of verifier queries from SmolLM2 on real text.

The grouped verify kernel pays for the union of the blocks its queries select, so its
speed-up rests on how much adjacent queries' selections overlap. Random weights give
meaningless overlap; this records the layouts of a real (NSA-adapted) model instead, for
the kernel benchmarks to replay (remapped to longer contexts with specsa.nsa.layout).

At each context length L (a multiple of the 64-token page, so all T queries share one
page), the text's first L tokens are in the cache and one teacher-forced verification
step appends the real next T tokens; every layer's selection [T, Hkv, n] is recorded and
the step rolled back. Texts are the standard library's own source (offline, real).

    python benchmarks/capture_layouts.py --out benchmarks/results/cpu/layouts_smollm2
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time

import torch

from specsa.generate import prefill
from specsa.model.loader import load_model, load_tokenizer
from specsa.model.registry import DEFAULT_MODEL
from specsa.nsa.layout import load_savings, pairwise_overlap

GROUP_SIZES = (2, 4, 8, 16, 32, 64)


def capture_text(model, ids: list[int], contexts: list[int], num_queries: int, chunk: int) -> list[torch.Tensor]:
    """Layouts [layers, T, Hkv, n] of one verification step at each context length (ascending)."""
    cache = model.new_cache(1, contexts[-1] + num_queries)
    slot = cache.allocate()
    layouts = []
    for context in contexts:
        prefill(model, cache, slot, ids[cache.lengths[slot] : context], chunk=chunk)
        record: list = []
        model(torch.tensor(ids[context : context + num_queries]), [slot], [num_queries], cache, record=record)
        cache.truncate(slot, context)
        layouts.append(torch.stack([per_sequence[0] for per_sequence in record]))  # [layers, T, Hkv, n]
    return layouts


def summarise(layout: torch.Tensor) -> dict[str, dict[int, float]]:
    """Median over layers of load_savings and pairwise_overlap for the first k queries."""
    return {
        name: {k: statistics.median(measure(layer[:k]) for layer in layout) for k in GROUP_SIZES if k <= layout.shape[1]}
        for name, measure in (("load_savings", load_savings), ("pairwise_overlap", pairwise_overlap))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--queries", type=int, default=64, help="T: verifier queries per step")
    parser.add_argument("--texts", default="argparse,typing", help="standard-library modules to read")
    parser.add_argument("--contexts", default="1536,2048,2560,3072,3584,4032;2048,3072,4032",
                        help="context lengths per text, ';' between texts")  # fmt: skip
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--out", default="benchmarks/results/cpu/layouts_smollm2", help="path without .pt/.json")
    args = parser.parse_args()

    texts = args.texts.split(",")
    contexts = [[int(c) for c in part.split(",")] for part in args.contexts.split(";")]
    if len(contexts) != len(texts):
        parser.error(f"--contexts gives {len(contexts)} lists for {len(texts)} texts.")
    model = load_model(args.model, attention="nsa", dtype=torch.float32, device="cpu")
    model.use_kernels = False
    tokenizer = load_tokenizer(args.model)
    block = model.nsa.sel_block

    started = time.time()
    layouts, samples = [], []
    for text, lengths in zip(texts, contexts):
        module = __import__(text)
        ids = tokenizer.encode(inspect.getsource(module))
        for length in lengths:
            if length % block or length + args.queries > len(ids):
                parser.error(f"Context {length} of {text} must be a multiple of {block} with {args.queries} tokens after it "
                             f"(the text has {len(ids)}).")  # fmt: skip
        for length, layout in zip(lengths, capture_text(model, ids, sorted(lengths), args.queries, args.chunk)):
            layouts.append(layout)
            samples.append({"text": f"Lib/{text}.py", "context": length, "num_blocks": -(-(length + args.queries) // block),
                            **summarise(layout)})  # fmt: skip
            print(f"captured Lib/{text}.py at {length} ({time.time() - started:.0f} s)", flush=True)

    meta = {
        "model": args.model,
        "nsa": {k: str(v) if not isinstance(v, int) else v for k, v in vars(model.nsa).items()},
        "queries": args.queries,
        "layout": "[samples, layers, T, Hkv, n] block indices, ascending, -1 pads; query t at position context + t",
        "seconds": round(time.time() - started, 1),
        "device": "cpu",
        "torch": str(torch.__version__),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/capture_layouts.py " + " ".join(f"--{k} '{v}'" for k, v in vars(args).items()),
    }
    torch.save(
        {
            "layouts": torch.stack(layouts).to(torch.int16),
            "contexts": [s["context"] for s in samples],
            "num_blocks": [s["num_blocks"] for s in samples],
            "texts": [s["text"] for s in samples],
            "meta": meta,
        },
        args.out + ".pt",
    )
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "samples": samples}, f, indent=2)

    print("\nmedian over layers; savings = Σ|S_q| / |∪ S_q| (1 … k), overlap = mean |S_a ∩ S_b| / min(|S_a|, |S_b|)")
    print(f"{'text':18} {'context':>7}  " + "  ".join(f"k={k:<2} sav/ovl" for k in GROUP_SIZES))
    for s in samples:
        cells = [f"{s['load_savings'][k]:5.2f}/{s['pairwise_overlap'][k]:.2f}" for k in GROUP_SIZES]
        print(f"{s['text']:18} {s['context']:7}  " + "  ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
