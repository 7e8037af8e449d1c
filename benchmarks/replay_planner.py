"""`auto` against fixed prompt-lookup strategies, replayed on recorded greedy generations
(`specsa/orchestrate/replay.py`): no timing noise, so planner changes can be compared to
the percent. The step costs are `specsa profile`'s for SmolLM2 on the H100 (the planner's
own input; the loop's overhead, which the live planner learns, left out); the generations
are the default model's greedy output on real text, replayed one by one and as one batch.

    python benchmarks/replay_planner.py --record benchmarks/results/cpu/smollm2_streams.json
    python benchmarks/replay_planner.py --streams benchmarks/results/cpu/smollm2_streams.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from specsa.orchestrate.costs import LoopCosts, StepCosts
from specsa.orchestrate.planner import AutoPlanner
from specsa.orchestrate.profile import context_bucket, saved_costs
from specsa.orchestrate.replay import replay

PROFILE = Path(__file__).parent / "results/h100/profiles/smollm2_135m_q4_1_v9.json"


def record(path: Path, contexts: list[int], new_tokens: int) -> None:
    from specsa.generate import generate
    from specsa.model.loader import load_model, load_tokenizer
    from specsa.model.registry import DEFAULT_MODEL
    from specsa.orchestrate.bench import real_text_prompts
    from specsa.sampling import SamplingParams

    model, tokenizer = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    streams = []
    for context in contexts:
        for prompt in real_text_prompts(tokenizer, context, 2):
            tokens = generate(model, [prompt], SamplingParams(max_new_tokens=new_tokens), frozenset())[0].token_ids
            streams.append({"context": context, "prompt": prompt, "continuation": tokens})
            print(f"recorded {context} tokens + {len(tokens)}", flush=True)
    path.write_text(json.dumps({"model": DEFAULT_MODEL, "streams": streams}))


def profile_costs(profile: dict, length: int) -> dict[int, StepCosts]:
    """The profile's step costs at every batch bucket it measured, by batch."""
    buckets = sorted(int(key.split(":")[1]) for key in profile if key.startswith(f"{context_bucket(length)}:"))
    return {batch: saved_costs(profile, length, batch) for batch in buckets}


def at_running(by_batch: dict[int, StepCosts], host_ms: float) -> Callable[[int], StepCosts]:
    """What a step costs with n sequences running (the smallest measured batch holding
    them: a captured step runs at its batch bucket), in a loop whose host work per step,
    `host_ms`, overlaps the GPU's: a step takes the longer of the two, so the profile's
    differences between step sizes shrink or vanish (0: the profile as it is). With only
    batch 1 and 8 measured, a batch's tail of 2-4 sequences pays batch 8's costs, which
    made `auto` look 3% worse at 7.7K, batch 8 (0.928 against 0.959)."""
    overlapped = {batch: StepCosts({t: max(ms, host_ms) for t, ms in costs.target_ms.items()}, costs.draft_ms_per_token)
                  for batch, costs in by_batch.items()}  # fmt: skip
    return LoopCosts(overlapped, "ngram").profiled


def compare(generations: list[tuple[list[int], list[int]]], profile: dict, host_ms: float) -> str:
    """`auto` plans with the profile and is told each step's time under `host_ms`."""
    by_batch = profile_costs(profile, max(len(p) + len(c) + 8 for p, c in generations))
    costs = at_running(by_batch, host_ms)
    fixed = {gamma: replay(generations, costs, gamma) for gamma in (2, 4, 8)}
    auto = replay(generations, costs, 8, AutoPlanner(by_batch, "ngram", 8))
    best = max(fixed, key=fixed.get)
    return (" ".join(f"ngram:{g} {v:.3f}" for g, v in fixed.items())
            + f" | auto {auto:.3f} tok/ms = {auto / fixed[best]:.3f} of ngram:{best}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, help="generate greedy streams on real text and save them here")
    parser.add_argument("--streams", type=Path, help="replay these streams, one by one and all as one batch")
    parser.add_argument("--contexts", default="1024,4096")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--host-ms", default="0", help="host work per step that overlaps the GPU's, comma-separated")
    args = parser.parse_args()
    if args.record:
        record(args.record, [int(c) for c in args.contexts.split(",")], args.new_tokens)
    if args.streams:
        profile = json.loads(PROFILE.read_text())
        generations = [(s["prompt"], s["continuation"]) for s in json.loads(args.streams.read_text())["streams"]]
        for host_ms in map(float, args.host_ms.split(",")):
            print(f"host work {host_ms} ms per step")
            for prompt, continuation in generations:
                print(f"{len(prompt):>6} tokens, batch 1 | " + compare([(prompt, continuation)], profile, host_ms))
            print(f"all {len(generations)} as one batch | " + compare(generations, profile, host_ms))


if __name__ == "__main__":
    main()
