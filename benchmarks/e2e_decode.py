"""End-to-end decoding on the GPU: tokens/s of NSA vs dense attention, with and without
CUDA graphs, and prefill tokens/s, for Llama-shaped models with RANDOM weights (the
generated text is meaningless; the cost per token is what a trained model of that shape
pays). Models: 1B- and 8B-class Llamas (Llama-3.2-1B and Llama-3.1-8B shapes) and a
SmolLM2-135M-shaped one.

Decode throughput = generated tokens / decode wall time (prefill apart), greedy, with the
same prompt (random token ids) of each context length for every batch row. Kernels are
compiled by a short warm-up run first; CUDA graphs are captured before the decode timer
starts (`generate` does that), as an engine does at start-up.

    python benchmarks/e2e_decode.py --out benchmarks/results/h100/e2e_decode.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import contextlib

import torch
import triton
from timing import pdl_disabled

from specsa.config import ModelConfig, NSAConfig
from specsa.generate import generate, prefill, synchronize
from specsa.model.decoder import CausalLM
from specsa.sampling import SamplingParams

MODELS = {
    "llama-1b": ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_q_heads=32,
                            num_kv_heads=8, head_dim=64, max_position=131072 + 256, rope_theta=500000.0,
                            tie_embeddings=True),  # fmt: skip
    "llama-8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_q_heads=32,
                            num_kv_heads=8, head_dim=128, max_position=131072 + 256, rope_theta=500000.0),  # fmt: skip
    "smollm2-135m": ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                                num_q_heads=9, num_kv_heads=3, head_dim=64, max_position=131072 + 256,
                                rope_theta=100000.0, tie_embeddings=True),  # fmt: skip
}


VARIANTS = [(True, True), (True, False), (False, True)]  # (CUDA graphs, PDL)


def random_model(cfg: ModelConfig, attention: str, query_bias: float = 0.0) -> CausalLM:
    """A model of `cfg`'s shape with random weights, on the GPU in bf16.

    Random weights make adjacent queries nearly independent, so their NSA selections
    barely overlap, where a trained model's overlap a lot (SmolLM2 on real text: pairwise
    overlap 0.8–0.9 for 8 queries) and verification loads far fewer distinct blocks.
    `query_bias` > 0 dials the overlap in: every layer's q projection gets one fixed
    random bias of that standard deviation per entry of each head's slowly rotating
    RoPE dimensions (the upper half of each rotate-half pair's frequencies; k and v
    biases stay zero), a component all queries share. In the fast dimensions a shared
    part would not survive RoPE from one position to the next, nor the mean pooling of
    the compressed keys that selection ranks by. Callers measure the overlap it gives
    and report it."""
    if query_bias:
        cfg = dataclasses.replace(cfg, qkv_bias=True)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # made in bf16: an 8B model never exists in fp32
    try:
        with torch.device("cuda"):
            model = CausalLM(cfg, NSAConfig() if attention == "nsa" else None)
    finally:
        torch.set_default_dtype(default_dtype)
    for name, p in model.named_parameters():  # norms at 1 as in trained models: logits are not all ties
        torch.nn.init.ones_(p) if name.endswith("norm.weight") else torch.nn.init.normal_(p, std=0.02)
    if query_bias:
        q_size, half = cfg.num_q_heads * cfg.head_dim, cfg.head_dim // 2
        slow = torch.arange(q_size, device="cuda") % cfg.head_dim % half >= half // 2  # dims i and i + D/2 share a frequency
        shared = torch.randn(q_size, device="cuda", dtype=torch.bfloat16) * query_bias * slow
        with torch.no_grad():
            for layer in model.model.layers:
                bias = layer.self_attn.qkv_proj.bias
                bias.zero_()
                bias[:q_size] = shared
    return model.eval()


def decode_row(model, name, attention, context, batch, new_tokens, graphs, pdl=True) -> dict:
    prompt = torch.randint(0, model.config.vocab_size, (context,), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(max_new_tokens=new_tokens)
    chunk = 4096 if attention == "nsa" else context  # dense: one SDPA pass per prompt
    with contextlib.nullcontext() if pdl else pdl_disabled():
        gens = generate(model, [prompt] * batch, params, frozenset(), cuda_graphs=graphs, prefill_chunk=chunk)
    decode_s = gens[0].decode_s
    return {"model": name, "attention": attention, "context": context, "batch": batch, "cuda_graphs": graphs, "pdl": pdl,
            "new_tokens": new_tokens, "decode_s": decode_s, "tokens_per_s": batch * new_tokens / decode_s,
            "ms_per_step": 1e3 * decode_s / new_tokens, "allocated_gb": torch.cuda.memory_allocated() / 1e9}  # fmt: skip


def prefill_row(model, name, attention, context, chunk) -> dict:
    cache = model.new_cache(1, context + 1)
    slot = cache.allocate()
    tokens = torch.randint(0, model.config.vocab_size, (context,), generator=torch.Generator().manual_seed(2)).tolist()
    start = synchronize(torch.device("cuda"))
    prefill(model, cache, slot, tokens, chunk)
    seconds = synchronize(torch.device("cuda")) - start
    del cache
    torch.cuda.empty_cache()
    return {"model": name, "attention": attention, "part": "prefill", "context": context, "chunk": chunk,
            "prefill_s": seconds, "tokens_per_s": context / seconds,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-1b,smollm2-135m")
    parser.add_argument("--attentions", default="nsa,dense")
    parser.add_argument("--contexts", default="16384,32768,65536")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-contexts", default="32768,131072")
    parser.add_argument("--prefill-chunk", type=int, default=2048, help="NSA prefill chunk (dense: one pass)")
    parser.add_argument("--eager", action="store_true", help="also time without CUDA graphs (slow)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    result = {
        "benchmark": "e2e_decode",
        "weights": "random (throughput only; the text is meaningless)",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "nsa": {k: getattr(v, "value", v) for k, v in vars(NSAConfig()).items()},
        "command": "python benchmarks/e2e_decode.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
        "rows": rows,
    }

    def record(row: dict) -> None:  # saved as it comes, so a cut-short run keeps its rows
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    for name in args.models.split(","):
        for attention in args.attentions.split(","):
            model = random_model(MODELS[name], attention)
            for batch in map(int, args.batches.split(",")):  # compile every kernel variant first
                for graphs, pdl in VARIANTS:
                    decode_row(model, name, attention, 2048, batch, 4, graphs, pdl)
            for context in map(int, args.contexts.split(",")):
                for batch in map(int, args.batches.split(",")):
                    for graphs, pdl in VARIANTS[: None if args.eager else 2]:
                        record(decode_row(model, name, attention, context, batch, args.new_tokens, graphs, pdl))
                        torch.cuda.empty_cache()
            if name == "llama-1b":
                for context in map(int, args.prefill_contexts.split(",")):
                    torch.cuda.reset_peak_memory_stats()
                    chunk = args.prefill_chunk if attention == "nsa" else context
                    record(prefill_row(model, name, attention, context, chunk))
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
