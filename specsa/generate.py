"""Autoregressive generation for a batch of prompts: the baseline every speculative
figure is compared with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from specsa.cache import PagedKVCache
from specsa.config import StepVariant
from specsa.model.decoder import CausalLM
from specsa.model.graphs import StepGraphs
from specsa.prompt_cache import PromptCache, cache_for_call
from specsa.sampling import SamplingParams, sample


@dataclass
class Generation:
    """One request's output and timings."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""  # "eos" | "length"
    prefill_s: float = 0.0
    decode_s: float = 0.0
    cached_tokens: int = 0  # prompt tokens a `PromptCache` already held (not prefilled)
    # prompt_ids + token_ids, kept as tokens come: drafters read it every step, and
    # rebuilding it would cost O(context) per step (~0.2 ms for 64K tokens).
    context: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.context = self.prompt_ids + self.token_ids

    def add(self, token: int, params: SamplingParams, eos_ids: frozenset[int]) -> bool:
        """Append a token; returns True when the request is finished."""
        self.token_ids.append(token)
        self.context.append(token)
        if token in eos_ids:
            self.finish_reason = "eos"
        elif len(self.token_ids) >= params.max_new_tokens:
            self.finish_reason = "length"
        return bool(self.finish_reason)


def synchronize(device: torch.device) -> float:
    """Wall time after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def check_lengths(prompts: list[list[int]], params: SamplingParams, max_position: int) -> None:
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"Prompt {i} is empty: give at least one token of text.")
        if len(prompt) + params.max_new_tokens > max_position:
            raise ValueError(
                f"Prompt {i} has {len(prompt)} tokens; with max_new_tokens={params.max_new_tokens} it "
                f"would pass the model's context of {max_position} tokens. Shorten the prompt or "
                f"lower --max-new-tokens."
            )


def prefill(
    model: CausalLM, cache: PagedKVCache, slot: int, tokens: list[int], chunk: int, progress: bool = False
) -> Tensor:
    """Append `tokens` to a sequence in chunks of `chunk` tokens, so memory stays bounded
    however long the prompt is. Returns the last position's logits [V]."""
    device = model.lm_head.weight.device
    ids = torch.tensor(tokens, device=device)
    bar = tqdm(total=len(tokens), desc="prefill", unit="tok", leave=False, disable=not progress or None)
    for begin in range(0, len(tokens), chunk):
        hidden = model(ids[begin : begin + chunk], [slot], [min(chunk, len(tokens) - begin)], cache, exact=True)
        bar.update(hidden.shape[0])
    bar.close()
    return model.logits(hidden[-1:])[0]


def start_requests(
    model: CausalLM,
    cache: PagedKVCache,
    gens: list[Generation],
    slots: list[int],
    params: SamplingParams,
    eos_ids: frozenset[int],
    generator: torch.Generator | None,
    prefill_chunk: int,
    progress: bool,
    cached: list[int],
) -> list[int]:
    """Prefill every prompt past the `cached[i]` tokens its slot already holds and sample
    its first token; returns the requests still running."""
    device = model.lm_head.weight.device
    last_logits = []
    for gen, slot, num_cached in zip(gens, slots, cached):
        start = synchronize(device)
        gen.cached_tokens = num_cached
        last_logits.append(prefill(model, cache, slot, gen.prompt_ids[num_cached:], prefill_chunk, progress))
        gen.prefill_s = synchronize(device) - start
    first = sample(torch.stack(last_logits), params, generator).tolist()
    return [i for i, token in enumerate(first) if not gens[i].add(token, params, eos_ids)]


def _graphs_wanted(model: CausalLM, cuda_graphs: bool | None) -> bool:
    """`cuda_graphs`, by default on wherever the kernels run on CUDA."""
    on_cuda = model.lm_head.weight.is_cuda
    if cuda_graphs is None:
        return on_cuda and model.use_kernels is not False
    if cuda_graphs and not on_cuda:
        raise ValueError("CUDA graphs need a CUDA device; drop the option on the CPU.")
    return cuda_graphs


def step_graphs(model: CausalLM, cache: PagedKVCache, cuda_graphs: bool | None, **run) -> StepGraphs | None:
    """CUDA graphs for the decode/verify steps on `cache` (see `_graphs_wanted`); `run`: as
    `StepGraphs` takes it."""
    return StepGraphs(model, cache, **run) if _graphs_wanted(model, cuda_graphs) else None


def kept_graphs(prompt_cache: PromptCache, cuda_graphs: bool | None,
                variants: dict[tuple[int, int], StepVariant] | None = None) -> StepGraphs | None:  # fmt: skip
    """The target's step graphs for a call on `prompt_cache`: those an earlier call on it
    captured, if made with the same `variants`, else new ones kept for the next call. A
    speculative call captures up to k + 1 step shapes a batch bucket (a chat's every turn
    would, otherwise)."""
    if not _graphs_wanted(prompt_cache.model, cuda_graphs):
        return None
    kept = prompt_cache.graphs
    if kept is None or kept.variants != (variants or {}):
        prompt_cache.graphs = StepGraphs(prompt_cache.model, prompt_cache.cache, variants)
    return prompt_cache.graphs


def step_logits(model: CausalLM, cache: PagedKVCache, graphs: StepGraphs | None, token_ids: Tensor | list[int],
                slots: list[int], query_lens: list[int], **run) -> Tensor:  # fmt: skip
    """Logits [N, V] of a step that appends query_lens[i] tokens to slots[i]: replayed from
    a CUDA graph when every sequence appends the same number (and the shape is capturable),
    else run eagerly (with `run`, the options the graphs were captured with)."""
    if graphs is not None and len(set(query_lens)) == 1 and graphs.supports(len(slots), query_lens[0]):
        return graphs.logits(token_ids, slots, query_lens[0])
    if isinstance(token_ids, list):
        token_ids = torch.tensor(token_ids, device=model.lm_head.weight.device)
    return model.logits(model(token_ids, slots, query_lens, cache, **run))


def decode_step(model, cache, graphs, gens, slots, active, params, eos_ids, generator, host_work=None) -> list[int]:
    """One autoregressive step of the active requests (indices into gens and slots): each
    one's last token in, one sampled token out. Returns the requests still running.
    `host_work()` is called while the GPU runs the step."""
    ids = [gens[i].token_ids[-1] for i in active]
    logits = step_logits(model, cache, graphs, ids, [slots[i] for i in active], [1] * len(active))
    next_tokens = sample(logits, params, generator)
    if host_work is not None:
        host_work()
    next_tokens = next_tokens.tolist()
    return [i for i, token in zip(active, next_tokens) if not gens[i].add(token, params, eos_ids)]


def generate(
    model: CausalLM,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_ids: frozenset[int],
    *,
    prefill_chunk: int = 1024,
    cuda_graphs: bool | None = None,
    progress: bool = False,
    prompt_cache: PromptCache | None = None,
) -> list[Generation]:
    """Greedy or sampled autoregressive decoding; prompts may differ in length.
    `cuda_graphs`: replay decode steps from CUDA graphs (default: on CUDA with kernels).
    `prompt_cache`: keep the requests' KV caches for later calls, and start from what it
    holds of these prompts (default: a cache for this call alone)."""
    check_lengths(prompts, params, model.config.max_position)
    device = model.lm_head.weight.device
    generator = None if params.seed is None else torch.Generator(device).manual_seed(params.seed)
    room = params.max_new_tokens
    prompt_cache = cache_for_call(prompt_cache, model, prompts, room)
    cache = prompt_cache.cache
    gens = [Generation(list(p)) for p in prompts]
    with prompt_cache.requests(prompts, room) as (slots, cached):
        graphs = kept_graphs(prompt_cache, cuda_graphs)
        active = start_requests(model, cache, gens, slots, params, eos_ids, generator, prefill_chunk, progress, cached)
        if graphs is not None and active:
            graphs.prepare_all(len(active), [1])
        start = synchronize(device)

        bar = tqdm(total=params.max_new_tokens, desc="decode", unit="tok", leave=False, disable=not progress or None)
        while active:
            active = decode_step(model, cache, graphs, gens, slots, active, params, eos_ids, generator)
            bar.update(1)
        bar.close()
        decode_s = synchronize(device) - start
        for gen, slot in zip(gens, slots):
            gen.decode_s = decode_s
            prompt_cache.park(slot, gen.context)
    return gens


def prefill_prompts(prompt_cache: PromptCache, prompts: list[list[int]], prefill_chunk: int = 1024) -> None:
    """Prefill `prompts` into `prompt_cache` and park them, so that every later call on it
    with these prompts feeds only their last tokens again (a benchmark's strategies then
    start alike, without a prefill each)."""
    generate(prompt_cache.model, prompts, SamplingParams(max_new_tokens=1), frozenset(), prefill_chunk=prefill_chunk,
             prompt_cache=prompt_cache)  # fmt: skip
