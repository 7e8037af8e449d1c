"""A KV cache kept from one `generate` call to the next, so that a prompt beginning like
an earlier request (a long document asked about again, a chat's growing history)
prefills only what is new. At 64K tokens that prefill is seconds; decoding an answer
is often less.

Each finished request leaves its slot parked with the tokens its cache holds. A new
prompt takes the parked slot sharing its longest beginning, which is cut back to that
beginning; a prompt sharing nothing takes a free slot, or the slot parked longest ago.
The kept keys and values are the ones the earlier request wrote, so the output is what
a fresh cache gives (token for token in float32; in bf16 up to the rounding of near-ties,
as with any change of prefill chunks). Under `--precision shared` or `reuse`, generated
tokens' keys and values are those its verification steps computed, where a fresh prefill
would compute them exactly. The CUDA graphs a call captures on the cache are kept too, and
the next call replays them (`generate.kept_graphs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from specsa.cache import PagedKVCache
from specsa.model.decoder import CausalLM
from specsa.model.graphs import StepGraphs


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cache_for_call(prompt_cache: PromptCache | None, model: CausalLM, prompts: list[list[int]], room: int) -> PromptCache:
    """The prompt cache a `generate` call uses: the caller's, or one for this call alone.
    `room`: tokens a request may add past its prompt."""
    if prompt_cache is None:
        return PromptCache(model, len(prompts), max(map(len, prompts)) + room)
    if prompt_cache.model is not model:
        raise ValueError("This prompt cache was made for another model: make one with PromptCache(model, …) for it.")
    return prompt_cache


class PromptCache:
    """One `generate` call at a time uses it (pass it as `prompt_cache=`)."""

    def __init__(self, model: CausalLM, max_seqs: int, max_len: int):
        """Room for `max_seqs` requests at once, each up to `max_len` tokens (prompt, new
        tokens and, when speculating, the drafts verified past them)."""
        if max_seqs < 1 or max_len < 2:
            raise ValueError(f"A prompt cache needs max_seqs ≥ 1 and max_len ≥ 2; got {max_seqs} and {max_len}.")
        self.model = model
        self.cache: PagedKVCache = model.new_cache(max_seqs, max_len)
        self.parked: dict[int, list[int]] = {}  # slot -> the tokens its cache holds, longest parked first
        self._open: set[int] = set()  # slots of the requests running now
        self.graphs: StepGraphs | None = None  # the steps' CUDA graphs on this cache (`generate.kept_graphs`)

    @contextmanager
    def requests(self, prompts: list[list[int]], room: int) -> Iterator[tuple[list[int], list[int]]]:
        """(slots, cached) for a batch of prompts: a slot each, and how many of each
        prompt's first tokens its slot already holds. `room`: tokens a request may add
        past its prompt. On leaving, `park(slot, tokens)` must have been called for each
        slot that finished; the rest are freed (an error midway leaves nothing behind)."""
        max_seqs = len(self.cache.lengths)
        if len(prompts) > max_seqs:
            raise ValueError(f"{len(prompts)} prompts at once, but the prompt cache holds {max_seqs} "
                             f"requests; make it larger or pass fewer prompts.")  # fmt: skip
        for i, prompt in enumerate(prompts):
            if len(prompt) + room > self.cache.max_len:
                raise ValueError(f"Prompt {i} has {len(prompt)} tokens and may grow by {room}, past the prompt "
                                 f"cache's {self.cache.max_len} tokens a request; make it larger.")  # fmt: skip
        slots, cached = [], []
        for prompt in prompts:
            slot, reused = self._take(prompt)
            slots.append(slot)
            cached.append(reused)
        self._open = set(slots)
        try:
            yield slots, cached
        finally:
            for slot in self._open:  # not parked: what its cache holds is not known
                self.cache.free(slot)
            self._open = set()

    def park(self, slot: int, tokens: list[int]) -> None:
        """A finished request's slot keeps its cache for later prompts: `tokens` are the
        request's prompt and output, of which the cache holds the first `lengths[slot]`."""
        self._open.discard(slot)
        self.parked[slot] = tokens[: self.cache.lengths[slot]]

    def _take(self, prompt: list[int]) -> tuple[int, int]:
        """The slot for `prompt` and how many of its tokens it holds. The last prompt token
        is always fed again: its logits give the first new token."""
        shared = {slot: min(common_prefix(tokens, prompt), len(prompt) - 1) for slot, tokens in self.parked.items()}
        best = max(shared, key=shared.__getitem__, default=None)
        if best is not None and shared[best] > 0:
            del self.parked[best]
            self.cache.truncate(best, shared[best])
            return best, shared[best]
        if not self.cache.num_free_slots:  # every slot parked or in use: the one parked longest ago goes
            oldest = next(iter(self.parked))
            del self.parked[oldest]
            self.cache.free(oldest)
        return self.cache.allocate(), 0
