"""`specsa generate`: text from a model with NSA attention, on the CPU or a GPU."""

from __future__ import annotations

import argparse
import json
import sys

from specsa.errors import ModelLoadError
from specsa.model.registry import DEFAULT_MODEL

NSA_FLAGS = {  # flag -> NSAConfig field
    "--nsa-cmp-block": "cmp_block",
    "--nsa-cmp-stride": "cmp_stride",
    "--nsa-sel-block": "sel_block",
    "--nsa-num-selected": "num_selected",
    "--nsa-window": "window",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specsa", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate text from a prompt")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="known name, checkpoint directory or .gguf file")
    gen.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for a batch")
    gen.add_argument("--prompt-file", action="append", default=[], help="file holding one prompt; '-' for stdin")
    gen.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    gen.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                     help="default: bfloat16 on CUDA, float32 on the CPU")  # fmt: skip
    gen.add_argument("--attention", default="nsa", choices=["nsa", "dense"])
    for flag, field in NSA_FLAGS.items():
        gen.add_argument(flag, type=int, default=None, help=f"NSA {field} (dense checkpoints; default: NSA paper)")
    gen.add_argument("--prefill-chunk", type=int, default=1024, help="prompt tokens per prefill pass")
    gen.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    return parser


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    for path in args.prompt_file:
        try:
            prompts.append(sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read())
        except OSError as error:
            raise ValueError(f"Cannot read the prompt file {path!r}: {error.strerror}.") from None
    if not prompts:
        raise ValueError("Give a prompt with --prompt TEXT or --prompt-file PATH ('-' reads stdin).")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"Prompt {i} is empty: give some text to continue.")
    return prompts


def pick_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"Unknown --device {name!r}: use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Unsupported --device {name!r}: use cpu, cuda or cuda:N.")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name} was asked for but no such CUDA device is available; use --device cpu.")
    return device


def encode(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat and tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    return tokenizer.encode(prompt)


def run_generate(args: argparse.Namespace) -> None:
    import torch

    from specsa.generate import generate
    from specsa.model.loader import load_model, load_tokenizer
    from specsa.sampling import SamplingParams

    prompts = read_prompts(args)
    params = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field in NSA_FLAGS.items()}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.prefill_chunk < 1:
        raise ValueError(f"--prefill-chunk must be at least 1, got {args.prefill_chunk}.")
    model = load_model(args.model, attention=args.attention, nsa_overrides=overrides, dtype=dtype, device=device)
    tokenizer = load_tokenizer(args.model)

    prompt_ids = [encode(tokenizer, p, not args.no_chat_template) for p in prompts]
    eos = set(model.config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    results = generate(model, prompt_ids, params, frozenset(eos), prefill_chunk=args.prefill_chunk, progress=True)
    for result in results:
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        generated = len(result.token_ids)
        record = {
            "text": text,
            "token_ids": result.token_ids,
            "prompt_tokens": len(result.prompt_ids),
            "generated_tokens": generated,
            "finish_reason": result.finish_reason,
            "prefill_s": round(result.prefill_s, 6),
            "decode_s": round(result.decode_s, 6),
            "decode_tokens_per_s": round(generated / result.decode_s, 3) if result.decode_s > 0 else None,
        }
        if args.json:
            print(json.dumps(record))
        else:
            print(text)
            print(
                f"[{record['prompt_tokens']} prompt tokens, prefill {record['prefill_s']:.2f}s; {generated} tokens "
                f"in {record['decode_s']:.2f}s = {record['decode_tokens_per_s']} tok/s; {args.attention}, {device}]",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_generate(args)
    except (ValueError, ModelLoadError) as error:  # CacheFullError is a RuntimeError: a bug, not input
        print(f"specsa: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
