"""The speculative decoding loop: draft, verify γ+1 tokens in one target pass, accept
losslessly, roll the caches back to what was committed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from specsa.config import StepVariant
from specsa.generate import (Generation, check_lengths, decode_step, kept_graphs, start_requests, step_logits,
                              synchronize)  # fmt: skip
from specsa.model.decoder import CausalLM
from specsa.prompt_cache import PromptCache, cache_for_call
from specsa.sampling import SamplingParams, target_probabilities
from specsa.spec.acceptance import greedy_accept, rejection_sample
from specsa.spec.drafter import Drafter, Proposal


@dataclass
class SpecStats:
    """Per-request speculation metrics."""

    num_speculative_tokens: int
    target_forwards: int = 0
    committed: int = 0
    drafted: int = 0
    accepted: int = 0
    # per draft position: drafts that reached it (offered, every position before accepted)
    reached_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)  # of them, accepted
    draft_s: float = 0.0
    verify_s: float = 0.0

    def __post_init__(self) -> None:
        self.reached_at = [0] * self.num_speculative_tokens
        self.accepted_at = [0] * self.num_speculative_tokens

    def record(self, num_drafted: int, num_accepted: int, num_committed: int) -> None:
        self.target_forwards += 1
        self.committed += num_committed
        self.drafted += num_drafted
        self.accepted += num_accepted
        for i in range(min(num_drafted, num_accepted + 1)):
            self.reached_at[i] += 1
            self.accepted_at[i] += i < num_accepted

    @property
    def acceptance_length(self) -> float:
        """Tokens committed per target forward in the decode phase."""
        return self.committed / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_rate_by_position(self) -> list[float | None]:
        """The chance that position k is accepted once reached: the rates the planner
        learns and an oracle drafter is set to (their product gives how far drafts get)."""
        return [a / r if r else None for a, r in zip(self.accepted_at, self.reached_at)]


@dataclass
class SpecGeneration(Generation):
    stats: SpecStats | None = None


def generate_speculative(
    model: CausalLM,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_ids: frozenset[int],
    drafter_factory,
    num_speculative_tokens: int,
    *,
    prefill_chunk: int = 1024,
    cuda_graphs: bool | None = None,
    planner=None,
    step_variants: dict[tuple[int, int], StepVariant] | None = None,
    progress: bool = False,
    prompt_cache: PromptCache | None = None,
) -> list[SpecGeneration]:
    """Like `generate`, but each target pass verifies up to K drafted tokens per sequence.

    `drafter_factory(cache, generator)` builds the drafter once the target's cache exists
    (the self drafter works in it). `planner` (`orchestrate.planner.AutoPlanner`) picks the
    draft length of every step, up to K; without it every step drafts K. `step_variants`:
    how the target's captured steps run, from a profile (`StepGraphs`). `prompt_cache`:
    as `generate` takes it. Greedy output equals autoregressive greedy output; sampled
    output has the target's distribution.
    """
    if num_speculative_tokens < 1:
        raise ValueError(f"--num-speculative-tokens must be at least 1, got {num_speculative_tokens}.")
    check_lengths(prompts, params, model.config.max_position)
    k = num_speculative_tokens
    device = model.lm_head.weight.device
    generator = None if params.seed is None else torch.Generator(device).manual_seed(params.seed)
    room = params.max_new_tokens + k  # verification appends up to K tokens past what is finally kept
    prompt_cache = cache_for_call(prompt_cache, model, prompts, room)
    with prompt_cache.requests(prompts, room) as (slots, cached):
        graphs = kept_graphs(prompt_cache, cuda_graphs, step_variants)
        gens = _decode(model, prompts, params, eos_ids, drafter_factory, k, prompt_cache.cache, graphs, slots, cached,
                       generator, prefill_chunk, planner, progress)  # fmt: skip
        for gen, slot in zip(gens, slots):
            prompt_cache.park(slot, gen.context)
    return gens


def _decode(model, prompts, params, eos_ids, drafter_factory, k, cache, graphs, slots, cached, generator,
            prefill_chunk, planner, progress) -> list[SpecGeneration]:  # fmt: skip
    """The loop of `generate_speculative` over slots of `cache` that hold `cached[i]` of
    each prompt's tokens already, replaying `graphs` (or None: eager steps)."""
    device = model.lm_head.weight.device
    drafter: Drafter = drafter_factory(cache, generator)
    gens = [SpecGeneration(list(p), stats=SpecStats(k)) for p in prompts]
    active = start_requests(model, cache, gens, slots, params, eos_ids, generator, prefill_chunk, progress, cached)
    for i in active:  # the drafter reads each prompt, as part of that request's prefill
        began = synchronize(device)
        drafter.start(slots[i], gens[i].context)
        gens[i].prefill_s += synchronize(device) - began
    if graphs is not None and active:  # every step shape the loop can take, before the timer
        graphs.prepare_all(len(active), range(1, k + 2))
    start = synchronize(device)

    bar = tqdm(total=params.max_new_tokens * len(prompts), desc="decode", unit="tok", leave=False, disable=not progress or None)
    while active:
        step_start = time.perf_counter()
        contexts = [gens[i].context for i in active]
        active_slots = [slots[i] for i in active]

        def draft(length: int, by: Drafter = drafter):  # up to `length` tokens each, fewer near max_new_tokens
            budgets = [min(length, params.max_new_tokens - len(gens[i].token_ids) - 1) for i in active]
            return by.propose(active_slots, contexts, budgets)

        t0 = time.perf_counter()  # the device is idle: the last step ended on a host copy
        if planner is None:
            proposal = draft(k)
        elif drafter.proposals_are_free:  # `auto` sees the free drafts before it picks what to verify
            proposal = draft(k)
            use_model, length = planner.plan(active_slots, contexts, proposal.tokens, proposal.evidence)
            if use_model:  # the drafter pairs lookup with a model (`LookupAndModel`)
                began = time.perf_counter()
                proposal = draft(length, by=drafter.model_drafter)  # host lists: the device is done
                planner.observe_model_drafting(length, 1e3 * (time.perf_counter() - began))
            else:
                proposal.tokens = [d[:length] for d in proposal.tokens]
                if proposal.verdict is not None:  # a benchmark's reference decides
                    proposal.verdict = [min(v, length) for v in proposal.verdict]
        else:  # `auto` picks the length first; 0 = plain decoding
            step_k = planner.gamma(len(active))
            proposal = draft(step_k) if step_k else None
        t1 = time.perf_counter()  # drafts come back as host lists, so the device is done
        if proposal is None or not any(proposal.tokens):
            # A plain step, exactly as `generate` takes it; a drafter not asked catches up later.
            still_active = decode_step(model, cache, graphs, gens, slots, active, params, eos_ids, generator,
                                       host_work=None if planner is None else lambda: planner.book_steps(len(active)))  # fmt: skip
            for i in active:
                gens[i].stats.record(0, 0, 1)
                gens[i].stats.draft_s += t1 - t0
                if i not in still_active:
                    drafter.release(slots[i])
            bar.update(len(active))
            if planner is not None:
                planner.observe_step(0, 1e3 * (time.perf_counter() - step_start), len(active))
            active = still_active
            continue

        num_drafts = [len(d) for d in proposal.tokens]
        width = max(num_drafts)
        # Verify: each sequence feeds its last committed token and its drafts, padded to one
        # length so the step has one shape (a CUDA graph); padding is never accepted.
        feed = [[context[-1]] + drafts + [0] * (width - len(drafts)) for context, drafts in zip(contexts, proposal.tokens)]
        lengths_before = [cache.lengths[slots[i]] for i in active]
        logits = step_logits(model, cache, graphs, [t for row in feed for t in row], active_slots, [width + 1] * len(feed))
        verified = _verify(logits.view(len(feed), width + 1, -1), feed, num_drafts, proposal, params, generator)
        if planner is not None:  # its bookkeeping, while the GPU verifies
            planner.book_steps(len(active))
        t2 = synchronize(device)
        accepted, next_token = _decide(verified, proposal, params)

        still_active = []
        for row, i in enumerate(active):
            num_accepted = accepted[row]
            committed = proposal.tokens[row][:num_accepted] + [next_token[row]]
            cache.truncate(slots[i], lengths_before[row] + 1 + num_accepted)
            stats = gens[i].stats
            stats.record(num_drafts[row], num_accepted, len(committed))
            if planner is not None:
                planner.observe(num_drafts[row], num_accepted, proposal.evidence and proposal.evidence[row])
            stats.draft_s += t1 - t0
            stats.verify_s += t2 - t1
            if not any(gens[i].add(token, params, eos_ids) for token in committed):
                still_active.append(i)
            else:
                drafter.release(slots[i])
            bar.update(len(committed))
        if planner is not None:  # the whole step, host work included (the loop just synced)
            planner.observe_step(width, 1e3 * (time.perf_counter() - step_start), len(active))
        active = still_active
    bar.close()
    decode_s = synchronize(device) - start
    for gen in gens:
        gen.decode_s = decode_s
    return gens


def _verify(logits: Tensor, feed: list[list[int]], num_drafts: list[int], proposal: Proposal,
            params: SamplingParams, generator) -> Tensor:  # fmt: skip
    """The device's part of acceptance, launched behind the verification step. logits
    [B, K+1, V] of feed [B, K+1] (the last committed token, then K drafts, padded).
    Greedy: the target's argmax [B, K+1]; the host compares the drafts with it. Sampling:
    (accepted, next token) [2, B] from the rejection rule (`proposal.probs` None: one-hot)."""
    if params.greedy:
        return logits.argmax(-1)
    if proposal.verdict is not None:
        raise ValueError("An oracle drafter's verdict is for greedy decoding; set temperature 0.")
    device, draft_probs = logits.device, proposal.probs
    draft_tokens = torch.tensor(feed, device=device)[:, 1:]
    if draft_probs is None:
        draft_probs = torch.nn.functional.one_hot(draft_tokens, logits.shape[-1]).float()
    target_probs = target_probabilities(logits.flatten(0, 1), params).view(logits.shape)
    num_drafts_t = torch.tensor(num_drafts, device=device)
    return torch.stack(rejection_sample(draft_tokens, draft_probs[:, : draft_tokens.shape[1]], target_probs,
                                        num_drafts_t, generator))  # fmt: skip


def _decide(verified: Tensor, proposal: Proposal, params: SamplingParams) -> tuple[list[int], list[int]]:
    """(accepted, next token) per sequence, as host lists (one device sync). Greedy keeps the
    longest prefix of drafts equal to the target's argmax, then the argmax follows (what
    the rejection rule does with a one-hot target); a benchmark oracle's verdict replaces
    that decision."""
    if not params.greedy:
        accepted, next_token = verified.tolist()
        return accepted, next_token
    target_argmax = verified.tolist()  # [B, K+1]
    if proposal.verdict is None:
        return greedy_accept(proposal.tokens, target_argmax)
    return proposal.verdict, [row[a] for row, a in zip(target_argmax, proposal.verdict)]
