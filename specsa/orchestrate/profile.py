"""Step costs measured on this GPU for this model, saved as JSON and reused.

A profile maps (context bucket, batch) to the time of a target step appending T tokens
per sequence (T = 1 decode, T = γ+1 verification; CUDA-graph replays, as decoding runs
them) and each drafter's time per drafted token. The file is keyed by GPU, model shape,
NSA settings, precision and library versions, so a stale profile is never used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
import triton
from tqdm import tqdm

from specsa.config import PrecisionClass, StepVariant
from specsa.model.decoder import CausalLM
from specsa.model.graphs import BATCH_BUCKETS, StepGraphs
from specsa.orchestrate.costs import StepCosts, linear_costs, variants_by_shape
from specsa.orchestrate.planner import AutoPlanner
from specsa.spec.ngram import NgramDrafter


def context_bucket(length: int) -> int:
    """Costs are measured at powers of two from 4K; a context uses the bucket above it."""
    return max(4096, 1 << (max(length, 1) - 1).bit_length())


def batch_bucket(batch: int) -> int:
    """A batch's captured steps run at its batch bucket (`StepGraphs`), so it costs what
    the bucket does."""
    return next((bucket for bucket in BATCH_BUCKETS if bucket >= batch), batch)


@functools.cache
def _code_digest() -> str:
    """specsa's own source: new kernels or a new loop make an old profile's costs wrong."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def profile_path(model: CausalLM) -> Path:
    identity = json.dumps({
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": repr(model.config), "nsa": repr(model.nsa), "precision": repr(model.precision),
        "dtype": str(model.lm_head.weight.dtype), "torch": torch.__version__, "triton": triton.__version__,
        "specsa": _code_digest(),
    }, sort_keys=True)  # fmt: skip
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(os.environ.get("SPECSA_CACHE", Path.home() / ".cache" / "specsa"))
    return root / "profiles" / f"{digest}.json"


def _timed_ms(fn) -> float:
    """Milliseconds of fn run to completion, synced as the decode loop syncs a step."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start)


def nondecreasing(values: list[float]) -> list[float]:
    """The least-squares nondecreasing fit (pool adjacent violators). A step of more tokens
    does more work, so timing noise may not make it look cheaper; a slow sample is averaged
    with its neighbours rather than raising every later one."""
    pools: list[tuple[float, int]] = []  # (mean, count)
    for value in values:
        pools.append((value, 1))
        while len(pools) > 1 and pools[-2][0] > pools[-1][0]:
            (m2, c2), (m1, c1) = pools.pop(), pools.pop()
            pools.append(((m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2))
    return [mean for mean, count in pools for _ in range(count)]


QUERY_GROUPS = (2, 4, 8, 16)  # C tried for each step of more queries than C, beside the kernel's default
# An approximate selection must be this much faster than the exact one to be used: the
# class allows it, but precision that costs nothing is kept.
EXACT_MARGIN = 0.02


def step_variants(model: CausalLM) -> list[StepVariant]:
    """The ways a target step may run inside the model's precision class: each query group
    C, and with exact selection too where the class allows less."""
    exact = (False,) if model.precision.kind is PrecisionClass.EXACT else (False, True)
    return [StepVariant(group, e) for group in (None, *QUERY_GROUPS) for e in exact]


def fastest_variants(times: dict[tuple[int, StepVariant], list[float]],
                     approximate: bool) -> tuple[dict[int, float], dict[int, StepVariant]]:  # fmt: skip
    """From each (T, variant)'s timed runs: T -> ms of its best variant (a nondecreasing
    fit over T), and T -> that variant where it is not the default. Under an approximate
    class, exact selection is kept unless the approximation is `EXACT_MARGIN` faster."""

    def ranked_ms(key) -> float:
        return statistics.median(times[key]) * (1 + EXACT_MARGIN if approximate and not key[1].exact else 1)

    query_lens = sorted({t for t, _ in times})
    fastest = {t: min((key for key in times if key[0] == t), key=ranked_ms)[1] for t in query_lens}
    target_ms = dict(zip(query_lens, nondecreasing([statistics.median(times[t, fastest[t]]) for t in query_lens])))
    return target_ms, {t: variant for t, variant in fastest.items() if variant != StepVariant()}


def measure_step_costs(model: CausalLM, context: int, batch: int, max_gamma: int, rounds: int = 20) -> StepCosts:
    """Target steps of T = 1 … max_gamma+1 tokens per sequence after `context` tokens,
    each in every variant of `step_variants` (a query group only below T), keeping the
    fastest; and prompt lookup on such a context. The cache holds zeros, so every query
    selects the same blocks: the cheapest union a step can have (the loop's per-width
    corrections learn the live cost). Each round times every variant once, so a slow
    stretch of the GPU (clocks, a neighbour) touches all of them alike; a variant's cost
    is its median over the rounds."""
    cache = model.new_cache(batch, context + max_gamma + 1)
    slots = [cache.allocate() for _ in range(batch)]
    for slot in slots:
        cache.extend(slot, context)
    query_lens = range(1, max_gamma + 2)
    bucket = batch_bucket(batch)
    steps = {}  # (T, variant) -> a step of that shape
    for variant in step_variants(model):
        shapes = [t for t in query_lens if variant.query_group is None or variant.query_group < t]
        graphs = StepGraphs(model, cache, {(bucket, t): variant for t in shapes})
        for query_len in shapes:
            ids = torch.zeros(batch * query_len, dtype=torch.long, device=cache.block_table.device)

            def step(graphs=graphs, ids=ids, query_len=query_len):
                graphs.logits(ids, slots, query_len)
                for slot in slots:
                    cache.truncate(slot, context)

            steps[query_len, variant] = step
            for _ in range(3):  # capture and warm up
                step()
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            times[key].append(_timed_ms(step))
    target_ms, variants = fastest_variants(times, approximate=model.precision.kind is not PrecisionClass.EXACT)
    text = torch.randint(0, model.config.vocab_size, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    lookup = NgramDrafter()
    for slot in slots:
        lookup.start(slot, text)  # indexes the prompt, as a request's prefill does
    texts = [text + [i] for i in range(batch)]  # a step later: one more token each
    start = time.perf_counter()
    lookup.propose(slots, texts, [max_gamma] * batch)
    draft_ms = {"ngram": 1e3 * (time.perf_counter() - start) / max_gamma}
    return StepCosts(target_ms, draft_ms, variants)


def load_or_measure(model: CausalLM, contexts: list[int], batches: list[int], max_gamma: int,
                    progress: bool = True) -> dict[tuple[int, int], StepCosts]:  # fmt: skip
    """The profile for these (context bucket, batch bucket) points, measuring only what the
    saved file lacks (or measured for a shorter draft)."""
    path = profile_path(model)
    saved = json.loads(path.read_text()) if path.exists() else {}
    points = sorted({(context_bucket(c), batch_bucket(b)) for c in contexts for b in batches})
    missing = [p for p in points if f"{p[0]}:{p[1]}" not in saved
               or len(saved[f"{p[0]}:{p[1]}"]["target_ms"]) < max_gamma + 1]  # fmt: skip
    for context, batch in tqdm(missing, desc="profile", unit="point", disable=not progress or not missing):
        costs = measure_step_costs(model, context, batch, max_gamma)
        saved[f"{context}:{batch}"] = {"target_ms": costs.target_ms, "draft_ms_per_token": costs.draft_ms_per_token,
                                       "variants": {t: asdict(v) for t, v in costs.variants.items()}}  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=1))
    return {(context, batch): saved_costs(saved, context, batch) for context, batch in points}


def saved_costs(profile: dict, length: int, batch: int) -> StepCosts:
    """The step costs a saved profile (its JSON, read) holds for a context of `length`
    tokens at `batch` sequences."""
    point = profile[f"{context_bucket(length)}:{batch_bucket(batch)}"]
    variants = {int(t): StepVariant(**v) for t, v in point.get("variants", {}).items()}
    # profiles kept in benchmarks/results from before variants: a query group, or nothing
    variants |= {int(t): StepVariant(c) for t, c in point.get("query_groups", {}).items()}
    return StepCosts({int(t): ms for t, ms in point["target_ms"].items()}, point["draft_ms_per_token"], variants)


def buckets_up_to(batch: int) -> list[int]:
    """The batch buckets a loop of `batch` sequences runs at as sequences finish."""
    return [b for b in BATCH_BUCKETS if b < batch] + [batch_bucket(batch)]


def profile_for(model: CausalLM, max_len: int, batch: int, max_gamma: int) -> dict[int, StepCosts]:
    """Batch bucket -> this GPU's step costs for contexts up to `max_len` (measured now if
    missing), at every batch bucket a loop of `batch` sequences runs at."""
    costs = load_or_measure(model, [max_len], buckets_up_to(batch), max_gamma)
    return {b: costs[context_bucket(max_len), b] for b in buckets_up_to(batch)}


def saved_variants(model: CausalLM, max_len: int, batch: int) -> dict[tuple[int, int], StepVariant]:
    """How the target's steps run for a fixed strategy: as the saved profile found fastest
    (like a cache of tuned kernel configurations; nothing is measured here), the defaults
    where no profile is saved for this GPU, model and code."""
    path = profile_path(model)
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return variants_by_shape({b: saved_costs(saved, max_len, b) for b in buckets_up_to(batch)
                              if f"{context_bucket(max_len)}:{b}" in saved})  # fmt: skip


def planner_for(model: CausalLM, max_len: int, batch: int, max_gamma: int, model_drafter: bool = False) -> AutoPlanner:
    """The planner `--spec auto` runs: prompt lookup with this GPU's profile, and against a
    model drafter if `model_drafter` (its time is learnt as it runs); on the CPU the
    no-profile costs, under which it decodes plainly."""
    if not model.lm_head.weight.is_cuda:
        return AutoPlanner(linear_costs(max_gamma), "ngram", max_gamma, calibrate=False, model_drafter=model_drafter,
                           costs_source="none on the CPU: a step of T tokens is taken to cost T decodes")  # fmt: skip
    return AutoPlanner(profile_for(model, max_len, batch, max_gamma), "ngram", max_gamma,
                       costs_source=str(profile_path(model)), model_drafter=model_drafter)  # fmt: skip
