"""`auto` against fixed prompt-lookup strategies, replayed on recorded greedy generations
(`specsa/orchestrate/replay.py`): no timing noise, so planner changes can be compared to
the percent. The step costs are `specsa profile`'s for SmolLM2 on the H100 at batch 1
(the planner's own input; the loop's overhead, which the live planner learns, left out);
the generations are the default model's greedy output on real text.

    python benchmarks/replay_planner.py --record benchmarks/results/cpu/smollm2_streams.json
    python benchmarks/replay_planner.py --streams benchmarks/results/cpu/smollm2_streams.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specsa.orchestrate.policy import AutoPlanner, StepCosts
from specsa.orchestrate.profile import context_bucket
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, help="generate greedy streams on real text and save them here")
    parser.add_argument("--streams", type=Path, help="replay these streams")
    parser.add_argument("--contexts", default="1024,4096")
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    if args.record:
        record(args.record, [int(c) for c in args.contexts.split(",")], args.new_tokens)
    if args.streams:
        profile = json.loads(PROFILE.read_text())
        for stream in json.loads(args.streams.read_text())["streams"]:
            prompt, continuation = stream["prompt"], stream["continuation"]
            point = profile[f"{context_bucket(len(prompt) + len(continuation) + 8)}:1"]
            costs = StepCosts({int(t): ms for t, ms in point["target_ms"].items()}, point["draft_ms_per_token"])
            fixed = {gamma: replay(prompt, continuation, costs, gamma) for gamma in (2, 4, 8)}
            auto = replay(prompt, continuation, costs, 8, AutoPlanner(costs, "ngram", 8, calibrate=False))
            best = max(fixed, key=fixed.get)
            print(f"{stream['context']:>6} | AR {1 / costs.target_ms[1]:.3f} tok/ms | "
                  + " ".join(f"ngram:{g} {v:.3f}" for g, v in fixed.items())
                  + f" | auto {auto:.3f} = {auto / fixed[best]:.3f} of ngram:{best}")


if __name__ == "__main__":
    main()
