"""Where a speculative step's wall time goes beside its captured graph, on the GPU.

A 1B-class Llama with RANDOM weights and an ORACLE drafter (fixed rates, default step
variants, no profile) runs `generate_speculative`; every step is cut into the host's
sections (draft, feed, the step call up to the replay's launch, acceptance's launches,
the wait, the bookkeeping after it) with perf_counter marks, and the GPU's part is timed
with CUDA events from the step call to its end. The wall time minus the GPU's is what the
host holds the device idle for. Medians over the steps of the second of two timed runs;
the reference autoregressive run's time per step comes with it.

    python benchmarks/step_host_time.py --context 65536 --batch 8 --out benchmarks/results/h100/host.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import triton

import specsa.spec.engine as engine
from e2e_decode import MODELS, random_model
from specsa.generate import generate
from specsa.sampling import SamplingParams
from specsa.spec.oracle import OracleDrafter

RATES = [0.6427, 0.874, 0.8699, 0.9292, 0.9687, 0.9512, 0.9735, 0.9538]  # SmolLM2's prompt lookup, by position


class _Marks:
    """Timestamps of one loop's steps, from wrappers around the engine's calls."""

    def __init__(self):
        self.steps: list[dict] = []

    def draft(self, name: str) -> None:
        if name == "draft0":
            self.steps.append({})
        self.steps[-1][name] = time.perf_counter()

    def step_logits(self, *args, **kwargs):
        began, start, end = time.perf_counter(), torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        logits = _step_logits(*args, **kwargs)
        end.record()
        self.steps[-1].update(step_in=began, step_out=time.perf_counter(), events=(start, end))
        return logits

    def synchronize(self, device):
        waited = time.perf_counter()
        done = _synchronize(device)
        if self.steps and "step_out" in self.steps[-1] and "sync1" not in self.steps[-1]:
            self.steps[-1].update(sync0=waited, sync1=done)
        return done

    def summary(self) -> dict:
        steps = [s for s in self.steps if "sync1" in s]
        walls = [b["draft0"] - a["draft0"] for a, b in zip(steps, steps[1:])]

        def ms(first: str, last: str) -> float:
            return round(1e3 * statistics.median(s[last] - s[first] for s in steps), 4)

        return dict(steps=len(steps), wall_ms=round(1e3 * statistics.median(walls), 4),
                    gpu_ms=round(statistics.median(s["events"][0].elapsed_time(s["events"][1]) for s in steps), 4),
                    draft=ms("draft0", "draft1"), feed=ms("draft1", "step_in"), step_call=ms("step_in", "step_out"),
                    accept_launch=ms("step_out", "sync0"), wait=ms("sync0", "sync1"))  # fmt: skip


_step_logits, _synchronize = engine.step_logits, engine.synchronize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gamma", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model = random_model(MODELS["llama-1b"], "nsa")
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (args.context,), generator=torch.Generator().manual_seed(b)).tolist()
               for b in range(args.batch)]  # fmt: skip
    params = SamplingParams(max_new_tokens=args.new_tokens)
    reference = generate(model, prompts, params, frozenset(), prefill_chunk=4096)
    marks = _Marks()

    class TimedOracle(OracleDrafter):
        def propose(self, *a):
            marks.draft("draft0")
            proposal = super().propose(*a)
            marks.draft("draft1")
            return proposal

    engine.step_logits, engine.synchronize = marks.step_logits, marks.synchronize
    continuations = [g.token_ids for g in reference]
    for _ in range(2):  # the first run warms up; the second is timed
        marks.steps.clear()
        engine.generate_speculative(model, prompts, params, frozenset(),
                                    lambda c, g: TimedOracle(prompts, continuations, RATES[: args.gamma], vocab),
                                    args.gamma, prefill_chunk=4096)  # fmt: skip
    row = marks.summary()
    row["after"] = round(row["wall_ms"] - sum(row[k] for k in ("draft", "feed", "step_call", "accept_launch", "wait")), 4)
    row["ar_ms_per_step"] = round(1e3 * reference[0].decode_s / len(reference[0].token_ids), 4)
    result = {"benchmark": "step_host_time", "model": "llama-1b", "weights": "random", "drafter": "ORACLE",
              "rates": RATES[: args.gamma], "context": args.context, "batch": args.batch, "gamma": args.gamma,
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d"), "row": row}  # fmt: skip
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
