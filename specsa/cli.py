"""`specsa generate`: text from a model with NSA attention, on the CPU or a GPU;
`specsa chat`: a conversation from stdin, its KV cache kept between turns;
`specsa profile`: this GPU's step costs, which `--spec auto` decides with;
`specsa bench`: autoregressive vs speculative strategies vs `auto`, as JSON, Markdown, PNG."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from specsa.errors import ModelLoadError
from specsa.model.registry import DEFAULT_MODEL

if TYPE_CHECKING:  # the command line starts without importing torch
    import torch
    from transformers import PreTrainedTokenizerBase

    from specsa.model.decoder import CausalLM
    from specsa.prompt_cache import PromptCache
    from specsa.sampling import SamplingParams

AUTO_REACH = 8  # the longest draft `auto` may verify unless told; it verifies fewer where they do not pay
FIXED_DRAFT = 4  # tokens a fixed drafter drafts every step unless told

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
    gen.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for a batch")
    gen.add_argument("--prompt-file", action="append", default=[], help="file holding one prompt; '-' for stdin")
    gen.add_argument("--no-chat-template", action="store_true", help="send the prompt as raw text")
    add_generation_arguments(gen)

    chat = commands.add_parser("chat", help="a conversation read from stdin, a question a line; its KV cache is kept "
                                            "between turns, so each turn prefills only what is new")  # fmt: skip
    chat.add_argument("--document", default=None, help="file whose text opens the conversation, sent with the first question")
    add_generation_arguments(chat)

    prof = commands.add_parser("profile", help="measure this GPU's step costs and fastest kernel variants (saved, reused)")
    add_model_arguments(prof)
    prof.add_argument("--contexts", default="4096,16384,65536", help="context lengths (rounded up to powers of two)")
    prof.add_argument("--batches", default="1,8")
    prof.add_argument("--num-speculative-tokens", type=int, default=AUTO_REACH, help="longest draft to measure")

    bench = commands.add_parser("bench", help="autoregressive vs speculative strategies vs auto, on real text")
    add_model_arguments(bench)
    bench.add_argument("--contexts", default="1024,2048,4096", help="prompt lengths in tokens")
    bench.add_argument("--batches", default="1")
    bench.add_argument("--max-new-tokens", type=int, default=64)
    bench.add_argument("--strategies", default="ar,ngram:2,ngram:4,ngram:8,auto",
                       help="ar, auto, ngram:γ, draft:γ, oracle:RATE:γ (the oracle is for random-weight models)")  # fmt: skip
    bench.add_argument("--draft-model", default=None,
                       help="model for draft:γ, and for auto to weigh against prompt lookup (same vocabulary as --model)")
    bench.add_argument("--num-speculative-tokens", type=int, default=AUTO_REACH, help="longest draft `auto` may choose")
    bench.add_argument("--num-prompts", type=int, default=None,
                       help="prompts every point decodes, a batch at a time (default: 8, or the fewest above "
                            "that every batch size divides)")
    bench.add_argument("--same-text", action="store_true",
                       help="prompt lookup drafts from the autoregressive run's text, which decides acceptance: "
                            "strategies timed on one text (bf16 rounding sends each onto its own otherwise)")
    bench.add_argument("--repeats", type=int, default=1,
                       help="runs of every strategy, in turn; rows report the median (GPU timings vary by ~10%%)")
    bench.add_argument("--out", default="bench", help="folder for bench.json, bench.md and bench.png")
    return parser


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling, the model and speculative decoding: the same for `generate` and `chat`."""
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    add_model_arguments(parser)
    spec = parser.add_argument_group("speculative decoding")
    spec.add_argument("--spec", default="auto", choices=["auto", "off", "ngram", "self", "draft"],
                      help="drafter; auto (default) drafts by prompt lookup (and by --draft-model if given) "
                           "only when this GPU's measured step costs and the acceptance so far say it pays")  # fmt: skip
    spec.add_argument("--num-speculative-tokens", type=int, default=None,
                      help=f"K: tokens drafted per step (default {FIXED_DRAFT}); auto: at most (default {AUTO_REACH})")
    spec.add_argument("--draft-model", default=None, help="model for --spec draft, or for auto to weigh against prompt lookup "
                                                                 "(same vocabulary as --model)")  # fmt: skip
    spec.add_argument("--ngram-min", type=int, default=1, help="shortest suffix --spec ngram looks up")
    spec.add_argument("--ngram-max", type=int, default=4, help="longest suffix --spec ngram looks up")
    spec.add_argument("--self-draft-selected", type=int, default=4, help="n of the self drafter's NSA")
    spec.add_argument("--self-draft-window", type=int, default=64, help="w of the self drafter's NSA")
    spec.add_argument("--self-draft-layers", default=None, help="layers the self drafter runs, e.g. 0-11,20")
    parser.add_argument("--prefill-chunk", type=int, default=1024, help="prompt tokens per prefill pass")
    parser.add_argument("--enforce-eager", action="store_true", help="run decode and verify steps without CUDA graphs")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt (per turn in chat)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The target model and its attention: the same for generating and for profiling."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="known name, checkpoint directory or .gguf file")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 on the CPU")  # fmt: skip
    parser.add_argument("--attention", default="nsa", choices=["nsa", "dense"])
    for flag, field in NSA_FLAGS.items():
        parser.add_argument(flag, type=int, default=None, help=f"NSA {field} (dense checkpoints; default: NSA paper)")
    parser.add_argument("--precision", default="exact", choices=["exact", "shared", "reuse"],
                        help="what verification may change vs autoregressive NSA (default: exact, lossless)")  # fmt: skip
    parser.add_argument("--share-group", type=int, default=4, help="C: adjacent verifier queries sharing a selection (shared)")
    parser.add_argument("--refresh-layers", default=None,
                        help="layers that compute a selection under --precision reuse, e.g. 0-29:4 (default: every 4th)")  # fmt: skip


def load_target(args: argparse.Namespace):
    """(model, NSA overrides, dtype, device) from the model arguments."""
    import torch

    from specsa.model.loader import load_model

    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    overrides = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field in NSA_FLAGS.items()}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    model = load_model(args.model, attention=args.attention, nsa_overrides=overrides, dtype=dtype, device=device)
    model.precision = precision_from(args, model.config.num_layers)
    return model, overrides, dtype, device


def run_profile(args: argparse.Namespace) -> None:
    from specsa.orchestrate.profile import load_or_measure, profile_path

    try:
        contexts = [int(c) for c in args.contexts.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise ValueError("--contexts and --batches take comma-separated numbers, e.g. 4096,16384.") from None
    if args.num_speculative_tokens < 1:
        raise ValueError(f"--num-speculative-tokens must be at least 1, got {args.num_speculative_tokens}.")
    model, *_ = load_target(args)
    if not model.lm_head.weight.is_cuda:
        raise ValueError("Profiles measure GPU step costs: run `specsa profile` on a CUDA device.")
    for (context, batch), costs in load_or_measure(model, contexts, batches, args.num_speculative_tokens).items():
        steps = "  ".join(f"T={t}: {ms:.2f}" + (f" ({costs.variants[t]})" if t in costs.variants else "")
                          for t, ms in sorted(costs.target_ms.items()))  # fmt: skip
        print(f"context {context:>7} batch {batch:>3}  ms per step  {steps}")
    print(f"saved to {profile_path(model)}")


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


def parse_layers(text: str | None, flag: str = "--self-draft-layers") -> list[int] | None:
    """'0-11,20' -> [0, 1, …, 11, 20]; '0-29:4' -> [0, 4, …, 28]."""
    if text is None:
        return None
    try:
        layers = []
        for part in text.split(","):
            span, _, step = part.partition(":")
            first, _, last = span.partition("-")
            layers.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    except ValueError:
        raise ValueError(f"{flag} takes layer numbers and ranges like 0-11,20 or 0-29:4; got {text!r}.") from None
    return layers


def precision_from(args: argparse.Namespace, num_layers: int):
    from specsa.config import Precision

    if args.precision != "exact" and args.attention != "nsa":
        raise ValueError(f"--precision {args.precision} changes NSA's block selection: use it with --attention nsa.")
    refresh = parse_layers(args.refresh_layers, "--refresh-layers")
    if refresh is not None and args.precision != "reuse":
        raise ValueError("--refresh-layers is only used with --precision reuse.")
    if refresh is not None and not all(0 <= layer < num_layers for layer in refresh):
        raise ValueError(f"--refresh-layers must name layers 0 … {num_layers - 1}; got {args.refresh_layers!r}.")
    refresh = tuple(refresh) if refresh is not None else Precision.every(num_layers, 4)
    return Precision(args.precision, share_group=args.share_group, refresh_layers=refresh)


def check_spec_args(args: argparse.Namespace) -> None:
    if args.num_speculative_tokens < 1:
        raise ValueError(f"--num-speculative-tokens must be at least 1, got {args.num_speculative_tokens}.")
    if args.draft_model is not None and args.spec not in ("draft", "auto"):
        raise ValueError("--draft-model is used with --spec draft or auto; choose one of them or drop --draft-model.")
    if args.spec == "draft" and args.draft_model is None:
        raise ValueError("--spec draft needs --draft-model PATH (a smaller model with the same vocabulary).")
    if args.spec == "self" and args.attention != "nsa":
        raise ValueError("--spec self drafts with a cheaper NSA of the target: use it with --attention nsa.")


def make_drafter_factory(args, model, params, overrides, dtype, device, num_prompts: int, max_len: int):
    """drafter_factory(cache, generator) for the chosen --spec."""
    import dataclasses

    from specsa.model.loader import load_model
    from specsa.spec.lookup_and_model import LookupAndModel
    from specsa.spec.model_drafter import DraftModelDrafter, SelfDrafter
    from specsa.spec.ngram import NgramDrafter

    if args.spec == "ngram" or (args.spec == "auto" and args.draft_model is None):
        drafter = NgramDrafter(args.ngram_min, args.ngram_max)
        return lambda cache, generator: drafter
    if args.spec == "self":
        draft_nsa = dataclasses.replace(model.nsa, num_selected=args.self_draft_selected, window=args.self_draft_window)
        layers = parse_layers(args.self_draft_layers)
        return lambda cache, generator: SelfDrafter(model, cache, params, generator, draft_nsa=draft_nsa, layers=layers)
    draft = load_model(args.draft_model, attention=args.attention, nsa_overrides=overrides, dtype=dtype, device=device)

    def model_drafter(generator):
        return DraftModelDrafter(draft, model, num_prompts, max_len, params, generator, prefill_chunk=args.prefill_chunk)

    if args.spec == "auto":  # the planner weighs the draft model against prompt lookup at every step
        return lambda cache, generator: LookupAndModel(NgramDrafter(args.ngram_min, args.ngram_max),
                                                       model_drafter(generator))  # fmt: skip
    return lambda cache, generator: model_drafter(generator)


def run_bench(args: argparse.Namespace) -> None:
    from specsa.model.loader import load_model, load_tokenizer
    from specsa.orchestrate.bench import parse_strategies, run_bench, write_report

    strategies = parse_strategies(args.strategies, args.num_speculative_tokens)
    try:
        contexts = [int(c) for c in args.contexts.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        raise ValueError("--contexts and --batches take comma-separated numbers, e.g. 1024,4096.") from None
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}.")
    model, overrides, dtype, device = load_target(args)
    if max(contexts) + args.max_new_tokens + args.num_speculative_tokens > model.config.max_position:
        raise ValueError(f"--contexts up to {max(contexts)} plus --max-new-tokens pass the model's context of "
                         f"{model.config.max_position} tokens.")  # fmt: skip
    draft = None
    if args.draft_model is not None:
        draft = load_model(args.draft_model, attention=args.attention, nsa_overrides=overrides, dtype=dtype, device=device)
    rows = run_bench(model, load_tokenizer(args.model), strategies, contexts, batches, args.max_new_tokens, args.repeats,
                     draft, args.num_prompts, args.same_text)  # fmt: skip
    drafting = f"draft model {args.draft_model}, " if draft is not None else ""
    if args.same_text:
        drafting += "SAME TEXT (lookup on the AR run's text, which decides acceptance), "
    title = (f"specsa bench: {args.model}, {args.attention}, precision {args.precision}, {drafting}{dtype}, {device}, "
             f"{rows[0]['num_prompts']} prompts, {args.max_new_tokens} new tokens each, greedy, "
             f"median of {args.repeats} run(s)")  # fmt: skip
    meta = {"title": title, "command": "specsa bench " + " ".join(sys.argv[2:]), "same_text": args.same_text}
    write_report(rows, meta, Path(args.out))
    print(Path(args.out, "bench.md").read_text())


@dataclass
class Session:
    """What `generate` and `chat` decode with, from their arguments."""

    args: argparse.Namespace
    model: CausalLM
    tokenizer: PreTrainedTokenizerBase
    params: SamplingParams
    eos: frozenset[int]
    overrides: dict  # NSA fields the command line set
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def load(cls, args: argparse.Namespace) -> Session:
        from specsa.model.loader import load_tokenizer
        from specsa.sampling import SamplingParams

        params = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
        if args.num_speculative_tokens is None:
            args.num_speculative_tokens = AUTO_REACH if args.spec == "auto" else FIXED_DRAFT
        check_spec_args(args)
        if args.prefill_chunk < 1:
            raise ValueError(f"--prefill-chunk must be at least 1, got {args.prefill_chunk}.")
        model, overrides, dtype, device = load_target(args)
        tokenizer = load_tokenizer(args.model)
        eos = set(model.config.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        return cls(args, model, tokenizer, params, frozenset(eos), overrides, dtype, device)

    def decode(self, prompt_ids: list[list[int]], prompt_cache: PromptCache | None = None) -> tuple[list, dict | None]:
        """(generations, what `auto` chose) for a batch of prompts, by the chosen --spec."""
        from specsa.generate import check_lengths, generate
        from specsa.orchestrate.profile import planner_for, saved_variants
        from specsa.spec.engine import generate_speculative

        args, model, params = self.args, self.model, self.params
        check_lengths(prompt_ids, params, model.config.max_position)  # before a GPU profile takes seconds
        options = dict(prefill_chunk=args.prefill_chunk, cuda_graphs=False if args.enforce_eager else None,
                       progress=True, prompt_cache=prompt_cache)  # fmt: skip
        if args.spec == "off":
            return generate(model, prompt_ids, params, self.eos, **options), None
        max_len = max(map(len, prompt_ids)) + params.max_new_tokens + args.num_speculative_tokens
        factory = make_drafter_factory(args, model, params, self.overrides, self.dtype, self.device, len(prompt_ids), max_len)
        planner = None
        if args.spec == "auto":
            planner = planner_for(model, max_len, len(prompt_ids), args.num_speculative_tokens,
                                  model_drafter=args.draft_model is not None)  # fmt: skip
            options["step_variants"] = planner.step_variants
        else:
            options["step_variants"] = saved_variants(model, max_len, len(prompt_ids))
        results = generate_speculative(model, prompt_ids, params, self.eos, factory, args.num_speculative_tokens,
                                       planner=planner, **options)  # fmt: skip
        return results, None if planner is None else {"drafter": "ngram", **planner.report()}

    def text(self, result) -> str:
        return self.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def run_generate(args: argparse.Namespace) -> None:
    prompts = read_prompts(args)
    session = Session.load(args)
    prompt_ids = [encode(session.tokenizer, p, not args.no_chat_template) for p in prompts]
    results, auto = session.decode(prompt_ids)
    for result in results:
        report(args, result, session.text(result), session.device, auto)


def run_chat(args: argparse.Namespace) -> None:
    """A question a line from stdin, each answered with the whole conversation before it
    as the prompt; a `PromptCache` keeps the conversation's KV cache between turns (made
    anew, twice as long, when a turn outgrows it: that turn prefills everything)."""
    from specsa.prompt_cache import PromptCache

    document = ""
    if args.document is not None:
        try:
            document = Path(args.document).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"Cannot read the document {args.document!r}: {error.strerror}.") from None
    session = Session.load(args)
    if not session.tokenizer.chat_template:
        raise ValueError(f"{args.model} has no chat template; use `specsa generate` for plain text.")
    prompt_cache = None
    messages: list[dict] = []
    for line in sys.stdin:
        question = line.strip()
        if not question:
            continue
        if document and not messages:
            question = f"{document}\n\n{question}"
        messages.append({"role": "user", "content": question})
        prompt = list(session.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        needed = len(prompt) + args.max_new_tokens + args.num_speculative_tokens
        if prompt_cache is None or prompt_cache.cache.max_len < needed:  # twice what this turn needs: room to grow
            longest = session.model.config.max_position + args.num_speculative_tokens
            prompt_cache = PromptCache(session.model, 1, min(2 * needed, longest))
        (result,), auto = session.decode([prompt], prompt_cache)
        answer = session.text(result)
        messages.append({"role": "assistant", "content": answer})
        report(args, result, answer, session.device, auto)


def report(args: argparse.Namespace, result, text: str, device, auto: dict | None) -> None:
    generated = len(result.token_ids)
    record = {
        "text": text,
        "token_ids": result.token_ids,
        "prompt_tokens": len(result.prompt_ids),
        "cached_tokens": result.cached_tokens,
        "generated_tokens": generated,
        "finish_reason": result.finish_reason,
        "prefill_s": round(result.prefill_s, 6),
        "decode_s": round(result.decode_s, 6),
        "decode_tokens_per_s": round(generated / result.decode_s, 3) if result.decode_s > 0 else None,
        "spec": args.spec,
        "precision": args.precision,
    }
    stats = getattr(result, "stats", None)
    if auto is not None:
        record["auto"] = auto
    if stats is not None:
        record.update(
            num_speculative_tokens=stats.num_speculative_tokens,
            acceptance_length=round(stats.acceptance_length, 4),
            acceptance_rate_by_position=[None if r is None else round(r, 4) for r in stats.acceptance_rate_by_position],
            drafted=stats.drafted,
            accepted=stats.accepted,
            draft_s=round(stats.draft_s, 6),
            verify_s=round(stats.verify_s, 6),
        )
    if args.json:
        print(json.dumps(record))
        return
    print(text)
    spec = f"; spec {args.spec}, acceptance length {record['acceptance_length']:.2f}" if stats else ""
    cached = f" ({result.cached_tokens} cached)" if result.cached_tokens else ""
    print(
        f"[{record['prompt_tokens']} prompt tokens{cached}, prefill {record['prefill_s']:.2f}s; {generated} tokens "
        f"in {record['decode_s']:.2f}s = {record['decode_tokens_per_s']} tok/s; {args.attention}, {device}{spec}]",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"generate": run_generate, "chat": run_chat, "profile": run_profile, "bench": run_bench}[args.command](args)
    except (ValueError, ModelLoadError) as error:  # CacheFullError is a RuntimeError: a bug, not input
        print(f"specsa: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
