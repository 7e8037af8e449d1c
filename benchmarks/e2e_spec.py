"""End-to-end speculative decoding vs autoregressive NSA on the GPU, for 1B- and 8B-class
Llamas with RANDOM weights and an ORACLE drafter.

Random weights make real drafters' acceptance meaningless, so drafts come from the
target's own greedy continuation (recorded by the autoregressive run), each position
right, once reached, with the rates measured for prompt lookup on SmolLM2 on real prompts
(`--smollm2-bench`, a `specsa bench` report: all points of its longest `ngram:K` pooled,
a step without a match counted as a rejected first position), or a flat rate (0.8, or
0.05 where speculation never pays). The oracle costs no draft time, like a prompt-lookup
drafter with an index: these figures are the verification side's, labelled "oracle"
everywhere.

`auto` is `--spec auto`'s planner with this point's measured step costs (a profile taken
in the run, at every batch bucket the batch shrinks through as sequences finish) and the
acceptance it learns as it goes; fixed γ run their steps as the same profile found fastest
(query group), so they differ from `auto` only in γ. Every strategy's tokens are compared
with the autoregressive tokens (`token_match`, up to
the first difference; greedy `exact` differs only by bf16 rounding of near-ties, which
random weights are full of). Past such a difference the oracle's verdict keeps the set
acceptance (`Proposal.verdict`), so the cost measured stays the one asked for.
Random weights also make adjacent queries select nearly disjoint blocks, so verification
loads many more distinct pages than a trained model's would; every point reports the
overlap it measured (`selection_overlap`: one verification step of γ+1 tokens after the
first prompt, medians over layers). `--query-bias S` gives the random model's queries a
shared component (`random_model`), which raises that overlap towards a trained model's;
rows then say so. Throughput = generated tokens / decode wall time; CUDA graphs on;
prefill apart. The oracle's draw for a draft is keyed by the token it lands on, so strategies meet the same
luck (common random numbers) however their drafts fall. With `--repeats N` every strategy
runs N times in turn, repeat r with oracle seed r for all of them, and rows report the
median decode time (`decode_s_runs` holds each run's). In each repeat the NSA model's
strategies start from one prefill of the prompts (a `PromptCache`; each feeds the last
prompt tokens again), made after AR dense: at 8B 32K batch 8 the two caches would not fit
on one H100 together.

    python benchmarks/e2e_spec.py --new-tokens 512 --repeats 3 --out benchmarks/results/h100/e2e_spec.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from e2e_decode import MODELS, random_model

from specsa.config import NSAConfig
from specsa.generate import generate, prefill, prefill_prompts
from specsa.orchestrate.bench import token_match
from specsa.model.decoder import CausalLM
from specsa.nsa.layout import load_savings, pairwise_overlap
from specsa.orchestrate.costs import StepCosts, variants_by_shape
from specsa.orchestrate.planner import AutoPlanner
from specsa.orchestrate.policy import choose
from specsa.orchestrate.profile import batch_bucket, buckets_up_to, measure_step_costs
from specsa.prompt_cache import PromptCache
from specsa.sampling import SamplingParams
from specsa.spec.engine import generate_speculative
from specsa.spec.oracle import OracleDrafter

NSA_PREFILL_CHUNK = 4096  # prefill is not timed; larger chunks only make the run shorter
# A high flat rate; a rate at which speculation never pays (`auto` must then fall back to
# plain decoding and stay within 5% of AR). SmolLM2's rates are read from its bench report.
RATES = {"oracle@0.8": [0.8], "oracle@0.05": [0.05]}
SMOLLM2_BENCH = Path(__file__).parent / "results/h100/smollm2_nsa/bench.json"


def smollm2_rates(bench_json: Path) -> list[float]:
    """The chance that each draft position is accepted once reached, pooled over the
    report's rows of its longest prompt-lookup draft (`ngram:K`, largest K); steps where
    prompt lookup found no match count as a rejected first position (the oracle always
    drafts)."""
    report_rows = json.loads(Path(bench_json).read_text())["rows"]
    lookups = [r["strategy"] for r in report_rows if r["strategy"].startswith("ngram:") and "reached_at" in r]
    if not lookups:
        raise SystemExit(f"{bench_json} has no ngram:K rows with acceptance counts; rerun `specsa bench` there.")
    strategy = max(lookups, key=lambda name: int(name.split(":")[1]))
    rows = [r for r in report_rows if r["strategy"] == strategy]
    reached = [sum(column) for column in zip(*(r["reached_at"] for r in rows))]
    accepted = [sum(column) for column in zip(*(r["accepted_at"] for r in rows))]
    reached[0] = sum(r["target_passes"] for r in rows)
    return [round(a / n, 4) for a, n in zip(accepted, reached) if n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-1b")
    parser.add_argument("--contexts", default="16384,32768,65536")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--gammas", default="2,4,8")
    parser.add_argument("--rates", default="oracle@smollm2-ngram,oracle@0.8",
                        help=f"acceptance rate sets among {['oracle@smollm2-ngram', *RATES]}")
    parser.add_argument("--smollm2-bench", type=Path, default=SMOLLM2_BENCH,
                        help="the `specsa bench` report on SmolLM2 that `oracle@smollm2-ngram` takes its rates from")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every strategy, in turn, each with its own oracle luck; rows report the median")
    parser.add_argument("--query-bias", type=float, default=0.0,
                        help="std of a q-projection bias shared by all queries (0: plain random weights), "
                             "which raises their selections' overlap towards a trained model's")  # fmt: skip
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rate_sets = {"oracle@smollm2-ngram": smollm2_rates(args.smollm2_bench), **RATES}
    gammas = list(map(int, args.gammas.split(",")))
    max_gamma = max(gammas)
    for name in args.rates.split(","):
        if 1 < len(rate_sets[name]) < max_gamma:
            raise SystemExit(f"{name} has rates for {len(rate_sets[name])} draft positions, fewer than --gammas "
                             f"reaches ({max_gamma}): give --smollm2-bench a report with ngram:{max_gamma}.")
    rows = []
    result = {
        "benchmark": "e2e_spec", "weights": f"random, q bias std {args.query_bias}" if args.query_bias else "random",
        "drafter": "ORACLE (target's own continuation at set rates)",
        "rates": rate_sets, "smollm2_bench": str(args.smollm2_bench),
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"), "nsa": {k: getattr(v, "value", v) for k, v in vars(NSAConfig()).items()},
        "command": "python benchmarks/e2e_spec.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
        "rows": rows,
    }  # fmt: skip

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    nsa_model = random_model(MODELS[args.model], "nsa", args.query_bias)
    dense_model = random_model(MODELS[args.model], "dense", args.query_bias)
    vocab = nsa_model.config.vocab_size
    params = SamplingParams(max_new_tokens=args.new_tokens)
    warm = [torch.randint(0, vocab, (2048,)).tolist()]  # compile every kernel variant once
    warm_params = SamplingParams(max_new_tokens=12)
    warm_reference = [g.token_ids for g in generate(nsa_model, warm, warm_params, frozenset())]
    generate(dense_model, warm, warm_params, frozenset())
    for gamma in gammas:
        generate_speculative(nsa_model, warm, warm_params, frozenset(),
                             lambda cache, g: OracleDrafter(warm, warm_reference, [0.5], vocab), gamma)  # fmt: skip
    for context in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            prompts = [torch.randint(0, vocab, (context,), generator=torch.Generator().manual_seed(b)).tolist()
                       for b in range(batch)]  # fmt: skip
            base = {"model": args.model, "context": context, "batch": batch, "new_tokens": args.new_tokens}
            ar = generate(nsa_model, prompts, params, frozenset(), prefill_chunk=NSA_PREFILL_CHUNK)
            reference = [g.token_ids for g in ar]
            base["selection_overlap"] = selection_overlap(nsa_model, prompts[0], reference[0], max_gamma + 1)
            costs = {}  # batch bucket -> step costs, at every bucket the batch shrinks through as sequences finish
            for bucket in buckets_up_to(batch):
                measured = measure_step_costs(nsa_model, context, bucket, max_gamma)
                # the oracle drafts for free
                costs[bucket] = StepCosts(measured.target_ms, {"oracle": 0.0}, measured.variants)
                record(dict(base, strategy="profile", bucket=bucket, target_ms=measured.target_ms,
                            variants={t: str(v) for t, v in measured.variants.items()}))
            runs = Runs(nsa_model, dense_model, prompts, reference, params, costs, max_gamma, rate_sets)
            strategies = ["ar-nsa", "ar-dense"] + [f"{name} {g}" for name in args.rates.split(",")
                                                   for g in ["auto"] + [f"γ={gamma}" for gamma in gammas]]  # fmt: skip
            decode_s = {strategy: [] for strategy in strategies}
            last = {}  # strategy -> (generations, planner) of its last run
            for repeat in range(args.repeats):  # every strategy in turn: the GPU's speed drifts over seconds
                prompt_cache = None
                for strategy in ["ar-dense"] + [s for s in strategies if s != "ar-dense"]:
                    if strategy != "ar-dense" and prompt_cache is None:
                        prompt_cache = runs.prefilled()
                    generations, planner = runs.decode(strategy, repeat, prompt_cache)
                    last[strategy] = generations, planner
                    decode_s[strategy].append(generations[0].decode_s)
                del prompt_cache  # freed before the next repeat's AR dense
            ar_s = statistics.median(decode_s["ar-nsa"])
            for strategy in strategies:
                generations, planner = last[strategy]
                median_s = statistics.median(decode_s[strategy])
                row = dict(base, strategy=strategy, decode_s_runs=decode_s[strategy],
                           tokens_per_s=batch * args.new_tokens / median_s, speedup_vs_ar_nsa=ar_s / median_s)  # fmt: skip
                if strategy.startswith("oracle"):
                    row.update(acceptance_length=sum(g.stats.acceptance_length for g in generations) / batch,
                               mean_step_ms=1e3 * generations[0].decode_s / generations[0].stats.target_forwards,
                               token_match=token_match(generations, reference))  # fmt: skip
                if planner is not None:
                    true_rates = {"oracle": rate_sets[strategy.split()[0]]}
                    row.update(planner.report(),
                               policy_choice_at_true_rates=choose(costs[batch_bucket(batch)], true_rates, max_gamma).gamma)
                record(row)
            torch.cuda.empty_cache()


def selection_overlap(model: CausalLM, prompt: list[int], continuation: list[int], num_queries: int) -> dict:
    """How alike the NSA selections of one verification step of `num_queries` tokens after
    `prompt` are: medians over layers of `pairwise_overlap` and `load_savings` (per-query
    block loads / the union's; 1 means disjoint, num_queries identical)."""
    cache = model.new_cache(1, len(prompt) + num_queries)
    slot = cache.allocate()
    prefill(model, cache, slot, prompt, chunk=NSA_PREFILL_CHUNK)
    record: list = []
    tokens = torch.tensor(continuation[:num_queries], device=model.lm_head.weight.device)
    with torch.inference_mode():
        model(tokens, [slot], [num_queries], cache, record=record)
    layouts = [selection[0] for selection in record]  # [T, Hkv, n] per layer
    return {"queries": num_queries,
            "pairwise_overlap": round(statistics.median(pairwise_overlap(layout) for layout in layouts), 3),
            "load_savings": round(statistics.median(load_savings(layout) for layout in layouts), 2)}  # fmt: skip


@dataclass(frozen=True)
class Runs:
    """How one point decodes its prompts by each strategy."""

    nsa_model: CausalLM
    dense_model: CausalLM
    prompts: list[list[int]]
    reference: list[list[int]]  # the autoregressive NSA tokens: the oracle's continuation
    params: SamplingParams
    costs: dict[int, StepCosts]  # by batch bucket
    max_gamma: int
    rate_sets: dict[str, list[float]]  # "oracle@…" -> acceptance by draft position

    def prefilled(self) -> PromptCache:
        """The NSA model's cache holding the prompts, for its strategies to start from."""
        room = self.params.max_new_tokens + self.max_gamma
        prompt_cache = PromptCache(self.nsa_model, len(self.prompts), max(map(len, self.prompts)) + room)
        prefill_prompts(prompt_cache, self.prompts, NSA_PREFILL_CHUNK)
        return prompt_cache

    def decode(self, strategy: str, seed: int, prompt_cache: PromptCache | None) -> tuple[list, AutoPlanner | None]:
        """(generations, `auto`'s planner) of "ar-nsa", "ar-dense" or "<rates> auto|γ=k".
        `seed`: the oracle's luck, shared by every strategy of one repeat. `prompt_cache`:
        the NSA model's (`prefilled`); AR dense makes its own."""
        if strategy == "ar-nsa":
            return generate(self.nsa_model, self.prompts, self.params, frozenset(), prefill_chunk=NSA_PREFILL_CHUNK,
                            prompt_cache=prompt_cache), None  # fmt: skip
        if strategy == "ar-dense":  # one SDPA pass per prompt
            chunk = len(self.prompts[0])
            return generate(self.dense_model, self.prompts, self.params, frozenset(), prefill_chunk=chunk), None
        rates_name, gamma = strategy.split()
        rates, vocab = self.rate_sets[rates_name], self.nsa_model.config.vocab_size
        factory = lambda cache, g: OracleDrafter(self.prompts, self.reference, rates, vocab, seed=seed)  # noqa: E731
        planner = AutoPlanner(self.costs, "oracle", self.max_gamma) if gamma == "auto" else None
        variants = variants_by_shape(self.costs)
        generations = generate_speculative(self.nsa_model, self.prompts, self.params, frozenset(), factory,
                                           self.max_gamma if planner else int(gamma.removeprefix("γ=")), planner=planner,
                                           step_variants=variants, prefill_chunk=NSA_PREFILL_CHUNK,
                                           prompt_cache=prompt_cache)  # fmt: skip
        return generations, planner

if __name__ == "__main__":
    main()
