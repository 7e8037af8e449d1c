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

from specsa.orchestrate.policy import AutoPlanner, StepCosts
from specsa.orchestrate.profile import saved_costs
from specsa.orchestrate.replay import replay

PROFILE = Path(__file__).parent / "results/h100/profiles/smollm2_135m_q4_1.json"


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


def profile_costs(profile: dict, length: int) -> Callable[[int], StepCosts]:
    """Step costs by running sequences from a profile measured at batch 1 and 8: batch 1's
    for one sequence, batch 8's (an upper bound) for more."""
    costs = {batch: saved_costs(profile, length, batch) for batch in (1, 8)}
    return lambda running: costs[1 if running == 1 else 8]


def compare(generations: list[tuple[list[int], list[int]]], profile: dict) -> str:
    costs = profile_costs(profile, max(len(p) + len(c) + 8 for p, c in generations))
    fixed = {gamma: replay(generations, costs, gamma) for gamma in (2, 4, 8)}
    auto = replay(generations, costs, 8, AutoPlanner(costs(len(generations)), "ngram", 8, calibrate=False))
    best = max(fixed, key=fixed.get)
    return (" ".join(f"ngram:{g} {v:.3f}" for g, v in fixed.items())
            + f" | auto {auto:.3f} tok/ms = {auto / fixed[best]:.3f} of ngram:{best}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, help="generate greedy streams on real text and save them here")
    parser.add_argument("--streams", type=Path, help="replay these streams, one by one and all as one batch")
    parser.add_argument("--contexts", default="1024,4096")
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    if args.record:
        record(args.record, [int(c) for c in args.contexts.split(",")], args.new_tokens)
    if args.streams:
        profile = json.loads(PROFILE.read_text())
        generations = [(s["prompt"], s["continuation"]) for s in json.loads(args.streams.read_text())["streams"]]
        for prompt, continuation in generations:
            print(f"{len(prompt):>6} tokens, batch 1 | " + compare([(prompt, continuation)], profile))
        print(f"all {len(generations)} as one batch | " + compare(generations, profile))


if __name__ == "__main__":
    main()
