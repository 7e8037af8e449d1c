"""`specsa bench`: autoregressive decoding vs fixed speculative strategies vs `auto`, over
context lengths and batch sizes, on real text that is available offline (the Python
standard library's own sources). Writes bench.json, bench.md and bench.png.

Strategies: `ar`; `ngram:γ` (prompt lookup drafting γ tokens); `draft:γ` (a draft model
drafting γ tokens); `auto` (prompt lookup, and the draft model if one is given, γ chosen
per step by the planner); `oracle:RATE:γ` (the target's own continuation, each position
right with probability RATE: for random-weight models, labelled as an oracle). Every
strategy's tokens are compared with the autoregressive run's (`token_match`). On a GPU
the profile is read (measured first if missing) and every speculative strategy runs its
target steps as it found fastest (query group, precision variant), as `specsa generate`
does once a profile is saved: fixed strategies and `auto` differ only in what they draft.
With `--same-text` every speculative strategy takes the steps it would take on the
autoregressive run's text (`spec/reference_lookup.py`), labelled as such.
"""

from __future__ import annotations

import json
import math
import statistics
import platform
import sysconfig
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from specsa.generate import generate, prefill_prompts
from specsa.model.decoder import CausalLM
from specsa.orchestrate.costs import variants_by_shape
from specsa.orchestrate.planner import AutoPlanner
from specsa.orchestrate.profile import planner_for, profile_for
from specsa.prompt_cache import PromptCache
from specsa.sampling import SamplingParams
from specsa.spec.engine import SpecGeneration, generate_speculative
from specsa.spec.lookup_and_model import LookupAndModel
from specsa.spec.model_drafter import DraftModelDrafter
from specsa.spec.ngram import NgramDrafter
from specsa.spec.oracle import OracleDrafter
from specsa.spec.reference_lookup import ReferenceLookup

SOURCES = ["argparse.py", "typing.py", "inspect.py", "subprocess.py", "dataclasses.py", "pathlib.py",
           "functools.py", "collections/__init__.py"]  # fmt: skip


@dataclass(frozen=True)
class Strategy:
    name: str
    kind: str  # "ar" | "ngram" | "draft" | "auto" | "oracle"
    gamma: int = 0
    rate: float = 0.0


def parse_strategies(text: str, max_gamma: int) -> list[Strategy]:
    """'ar,ngram:4,draft:4,auto,oracle:0.8:4' -> strategies; `auto` drafts at most max_gamma."""
    strategies = []
    for item in text.split(","):
        kind, *fields = item.strip().split(":")
        try:
            if kind == "ar" and not fields:
                strategies.append(Strategy("ar", "ar"))
            elif kind == "auto" and not fields:
                strategies.append(Strategy("auto", "auto", max_gamma))
            elif kind in ("ngram", "draft") and len(fields) == 1:
                strategies.append(Strategy(item, kind, int(fields[0])))
            elif kind == "oracle" and len(fields) == 2:
                strategies.append(Strategy(f"ORACLE rate {fields[0]} γ={fields[1]}", "oracle", int(fields[1]), float(fields[0])))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"Unknown strategy {item!r}: use ar, auto, ngram:γ, draft:γ or oracle:RATE:γ.") from None
    if "ar" not in [s.kind for s in strategies]:
        strategies.insert(0, Strategy("ar", "ar"))  # the baseline every speed-up is measured against
    return strategies


def real_text_prompts(tokenizer, context: int, batch: int) -> list[list[int]]:
    """`batch` prompts of exactly `context` tokens of Python source, each from another file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    tokens = [tokenizer.encode((root / name).read_text(encoding="utf-8")) for name in SOURCES]
    prompts = []
    for i in range(batch):
        text = []
        for j in range(len(SOURCES) * 8):  # cycle through the files until there is enough text
            text += tokens[(i + j) % len(SOURCES)]
            if len(text) >= context:
                break
        prompts.append(text[:context])
    return prompts


def token_match(results, reference: list[list[int]]) -> float:
    """Fraction of generated tokens equal to the autoregressive run's, up to each sequence's
    first difference (1.0: identical; bf16 may round a near-tie differently)."""
    matched = 0
    for result, expected in zip(results, reference):
        for got, want in zip(result.token_ids, expected):
            if got != want:
                break
            matched += 1
    return matched / max(sum(map(len, reference)), 1)


def acceptance_report(results: list[SpecGeneration]) -> dict:
    """Over all sequences: the share of target passes that verified drafts, and the chance
    that each draft position was accepted once reached (what an oracle is set to), with
    the counts behind it so that points can be pooled."""
    reached = [sum(column) for column in zip(*(r.stats.reached_at for r in results))]
    accepted = [sum(column) for column in zip(*(r.stats.accepted_at for r in results))]
    passes = sum(r.stats.target_forwards for r in results)
    return {"drafting_share": reached[0] / passes if passes else 0.0, "target_passes": passes,
            "reached_at": reached, "accepted_at": accepted,
            "acceptance_by_position": [round(a / r, 4) if r else None for a, r in zip(accepted, reached)]}  # fmt: skip


DEFAULT_PROMPTS = 8  # prompts a point decodes unless told (`run_bench` says why one is too few)


def default_num_prompts(batches: list[int]) -> int:
    """The fewest prompts from `DEFAULT_PROMPTS` on that every batch size divides: one
    generation a point at batch 1 says more about its prompt than about the strategy."""
    step = math.lcm(*batches)
    return step * math.ceil(DEFAULT_PROMPTS / step)


def run_bench(model: CausalLM, tokenizer, strategies: list[Strategy], contexts: list[int], batches: list[int],
              max_new_tokens: int, repeats: int = 1, draft_model: CausalLM | None = None,
              num_prompts: int | None = None, same_text: bool = False) -> list[dict]:  # fmt: skip
    """A row per (context, batch, strategy). Every point decodes the same `num_prompts`
    prompts (default: `default_num_prompts`), `batch` at a time, and reports their tokens
    over the sum of the batches' decode times: at batch 1 one 256-token generation
    decides too little (replayed, `auto` / the best fixed strategy ranges 0.93-1.11
    over 24 prompts). With `repeats` > 1 every strategy, the autoregressive baseline
    (always first) included, runs that many times in turn, and a row reports the median
    decode time (each run's in `decode_s_runs`): on a GPU the same tokens move by ±12%
    from run to run, more than the differences worth measuring. `draft_model` drafts for
    `draft:γ`, and for `auto` beside prompt lookup. `same_text`: prompt lookup runs on the
    autoregressive text, which decides acceptance (`ReferenceLookup`), so that strategies
    are timed on one text, not on the continuations bf16 rounding sends each onto. A
    batch's prompts are prefilled once a run into a `PromptCache` that every strategy
    starts from (at 64K a prefill takes seconds; decode times never included it)."""
    if draft_model is None and any(s.kind == "draft" for s in strategies):
        raise ValueError("A draft:γ strategy needs --draft-model PATH (a smaller model with the same vocabulary).")
    if same_text and draft_model is not None:
        raise ValueError("--same-text runs prompt lookup on the autoregressive text; it does not judge a draft model. "
                         "Drop --draft-model or --same-text.")  # fmt: skip
    num_prompts = num_prompts or default_num_prompts(batches)
    if any(num_prompts % batch for batch in batches):
        raise ValueError(f"--num-prompts {num_prompts} must be a multiple of every batch size ({batches}): "
                         "each point decodes the same prompts, a batch at a time.")  # fmt: skip
    decoder = _Decoder(model, draft_model, SamplingParams(max_new_tokens=max_new_tokens), same_text)
    max_gamma = max(s.gamma for s in strategies)
    rows = []
    for context in contexts:
        prompts = real_text_prompts(tokenizer, context, num_prompts)
        max_len = context + max_new_tokens + max_gamma
        for batch in batches:
            groups = [prompts[i : i + batch] for i in range(0, num_prompts, batch)]
            on_gpu = model.lm_head.weight.is_cuda and max_gamma > 0
            variants = variants_by_shape(profile_for(model, max_len, batch, max_gamma)) if on_gpu else {}
            prompt_cache = PromptCache(model, batch, max_len)  # a batch's prompts prefilled once for all strategies
            decode_s: dict[str, list[float]] = {strategy.name: [] for strategy in strategies}
            runs: dict[str, tuple] = {}  # strategy -> (generations, planners) of its last run
            reference: list[list[list[int]]] = []  # the autoregressive tokens, by group
            for _ in range(repeats):
                results = {strategy.name: [] for strategy in strategies}
                planners = {strategy.name: [] for strategy in strategies}
                seconds = dict.fromkeys(decode_s, 0.0)
                for g, group in enumerate(groups):
                    prefill_prompts(prompt_cache, group)
                    # every strategy in turn on each batch: the GPU's speed drifts by ~10% over seconds
                    for strategy in strategies:  # the autoregressive baseline first: it gives the reference
                        generations, planner = decoder.decode(strategy, group, reference[g] if g < len(reference) else None,
                                                              max_len, variants, prompt_cache)  # fmt: skip
                        if len(reference) == g:
                            reference.append([r.token_ids for r in generations])
                        results[strategy.name] += generations
                        planners[strategy.name] += [planner] if planner else []
                        seconds[strategy.name] += generations[0].decode_s
                for name, total in seconds.items():
                    decode_s[name].append(total)
                    runs[name] = (results[name], planners[name])
            ar_s = statistics.median(decode_s[strategies[0].name])
            every_reference = sum(reference, [])
            for strategy in strategies:
                results, planners = runs[strategy.name]
                median_s = statistics.median(decode_s[strategy.name])
                row = dict(context=context, batch=batch, num_prompts=num_prompts, strategy=strategy.name,
                           tokens_per_s=sum(len(r.token_ids) for r in results) / median_s, speedup=ar_s / median_s,
                           decode_s_runs=decode_s[strategy.name], token_match=token_match(results, every_reference))  # fmt: skip
                if strategy.kind != "ar":
                    row.update(acceptance_length=sum(r.stats.acceptance_length for r in results) / len(results),
                               **acceptance_report(results))  # fmt: skip
                if planners:
                    row["auto_by_group"] = [planner.report() for planner in planners]  # one planner per batch of prompts
                rows.append(row)
            del prompt_cache  # freed before the next point's is made
    return rows


@dataclass(frozen=True)
class _Decoder:
    """How a bench run decodes a batch of prompts by each strategy."""

    model: CausalLM
    draft_model: CausalLM | None
    params: SamplingParams
    same_text: bool  # prompt lookup drafts from the autoregressive text, which decides acceptance

    def decode(self, strategy: Strategy, prompts, reference, max_len: int, variants,
               prompt_cache: PromptCache) -> tuple[list, AutoPlanner | None]:  # fmt: skip
        """The generations, and `auto`'s planner. `reference`: the autoregressive tokens."""
        if strategy.kind == "ar":
            return generate(self.model, prompts, self.params, frozenset(), prompt_cache=prompt_cache), None
        planner = None
        if strategy.kind == "auto":
            planner = planner_for(self.model, max_len, len(prompts), strategy.gamma,
                                  model_drafter=self.draft_model is not None)  # fmt: skip
        generations = generate_speculative(self.model, prompts, self.params, frozenset(),
                                           self._drafter_factory(strategy, prompts, reference, max_len),
                                           strategy.gamma, planner=planner, step_variants=variants,
                                           prompt_cache=prompt_cache)  # fmt: skip
        return generations, planner

    def _drafter_factory(self, strategy: Strategy, prompts, reference, max_len: int):
        """drafter_factory(cache, generator) for a speculative strategy."""
        if strategy.kind == "oracle":
            return lambda cache, g: OracleDrafter(prompts, reference, [strategy.rate], self.model.config.vocab_size)
        if self.same_text:
            return lambda cache, g: ReferenceLookup(prompts, reference)
        if self.draft_model is None or strategy.kind == "ngram":
            return lambda cache, g: NgramDrafter()

        def model_drafter(generator):
            return DraftModelDrafter(self.draft_model, self.model, len(prompts), max_len, self.params, generator)

        if strategy.kind == "auto":
            return lambda cache, g: LookupAndModel(NgramDrafter(), model_drafter(g))
        return lambda cache, g: model_drafter(g)


def write_report(rows: list[dict], meta: dict, out: Path) -> None:
    """bench.json (rows + how they were made), bench.md (speed-ups) and bench.png. The
    versions and date are this machine's and today's unless `meta` names those of the
    run the rows came from."""
    out.mkdir(parents=True, exist_ok=True)
    versions = {"torch": torch.__version__, "python": platform.python_version(),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}  # fmt: skip
    (out / "bench.json").write_text(json.dumps({**versions, "date": time.strftime("%Y-%m-%d"), **meta, "rows": rows}, indent=1))
    points = sorted({(r["context"], r["batch"]) for r in rows})
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    value = {(r["strategy"], r["context"], r["batch"]): r for r in rows}
    lines = ["| strategy | " + " | ".join(f"{c} tok, batch {b}" for c, b in points) + " |",
             "|---|" + "---|" * len(points)]  # fmt: skip
    for name in names:  # a strategy not run at a point (a report pooled from several runs) shows "—"
        cells = [f"{value[name, c, b]['tokens_per_s']:.1f} tok/s ({value[name, c, b]['speedup']:.2f}×)"
                 if (name, c, b) in value else "—" for c, b in points]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "bench.md").write_text(f"{meta['title']}\n\n" + "\n".join(lines) + "\n")

    try:
        import matplotlib
    except ImportError:
        raise ValueError(f"bench.json and bench.md are in {out}; the plot needs matplotlib: "
                         "pip install 'specsa[bench]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({b for _, b in points})
    figure, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for axis, batch in zip(axes[0], batches):
        contexts = sorted({c for c, b in points if b == batch})
        for name in names:
            ran = [c for c in contexts if (name, c, batch) in value]
            if ran:
                axis.plot(ran, [value[name, c, batch]["tokens_per_s"] for c in ran], marker="o", label=name)
        axis.set(xscale="log", xlabel="context (tokens)", ylabel="decode tokens/s", title=f"batch {batch}")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(textwrap.fill(meta["title"], 70), fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "bench.png", dpi=120)
    plt.close(figure)
