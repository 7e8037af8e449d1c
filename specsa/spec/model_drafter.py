"""Drafting by running a causal LM for K steps: the target itself with cheaper attention
(`self`), or a separate smaller model with the same vocabulary (`draft`)."""

from __future__ import annotations

import torch

from specsa.cache import PagedKVCache
from specsa.config import NSAConfig
from specsa.generate import prefill, step_graphs, step_logits
from specsa.model.decoder import CausalLM
from specsa.sampling import SamplingParams, target_probabilities
from specsa.spec.drafter import Proposal


class ModelDrafter:
    """Keeps `cache` holding every committed token but the last; drafts from there and
    truncates back, so nothing it drafted outlives the call."""

    # Committed tokens are caught up through captured steps of up to this many tokens: an
    # eager chunk took 33 ms on SmolLM2 at 4K (H100) whatever its length, a replay 2 ms.
    catch_up_step = 16

    proposals_are_free = False  # a forward pass per drafted token

    def __init__(
        self,
        model: CausalLM,
        cache: PagedKVCache,
        params: SamplingParams,
        generator: torch.Generator | None,
        *,
        draft_nsa: NSAConfig | None = None,
        layers: list[int] | None = None,
        prefill_chunk: int = 1024,
    ):
        self.model, self.cache, self.params, self.generator = model, cache, params, generator
        self.forward_options = dict(draft_nsa=draft_nsa, layers=layers)
        self.prefill_chunk = prefill_chunk
        # Drafting is decode steps of one token: on a GPU, replayed CUDA graphs (an eager
        # step of a small model is launch-bound: SmolLM2-135M drafted 17x slower than AR).
        self.graphs = step_graphs(model, cache, None, **self.forward_options)

    def own_slot(self, slot: int) -> int:
        return slot

    def propose(self, slots: list[int], contexts: list[list[int]], num_tokens: list[int]) -> Proposal:
        k = max(num_tokens)
        if k == 0:
            return Proposal([[] for _ in slots], None)
        own = [self.own_slot(slot) for slot in slots]
        for slot, context in zip(own, contexts):
            self._catch_up(slot, context)
        device = self.model.lm_head.weight.device
        step_ids = torch.tensor([context[-1] for context in contexts], device=device)
        tokens, probs = [], []
        for _ in range(k):
            logits = step_logits(self.model, self.cache, self.graphs, step_ids, own, [1] * len(own), **self.forward_options)
            q = target_probabilities(logits, self.params)  # [B, V]
            step_ids = q.argmax(-1) if self.params.greedy else torch.multinomial(q, 1, generator=self.generator)[:, 0]
            tokens.append(step_ids)
            probs.append(q)
        for slot, context in zip(own, contexts):
            self.cache.truncate(slot, len(context) - 1)
        drafted = torch.stack(tokens, 1).tolist()  # [B, K]
        return Proposal([d[:n] for d, n in zip(drafted, num_tokens)], torch.stack(probs, 1))

    def _catch_up(self, own_slot: int, context: list[int]) -> None:
        """Append the context's tokens this drafter's cache has not seen: a prompt in
        chunks, the few committed since its last draft in captured steps."""
        behind = context[self.cache.lengths[own_slot] : -1]
        if self.graphs is None or len(behind) > 4 * self.catch_up_step:
            if behind:
                prefill(self.model, self.cache, own_slot, behind, self.prefill_chunk)
            return
        for begin in range(0, len(behind), self.catch_up_step):
            chunk = behind[begin : begin + self.catch_up_step]
            step_logits(self.model, self.cache, self.graphs, chunk, [own_slot], [len(chunk)], **self.forward_options)

    def start(self, slot: int, context: list[int]) -> None:
        self._catch_up(self.own_slot(slot), context)
        if self.graphs is not None:  # every step shape drafting takes, before decoding is timed
            self.graphs.prepare_all(len(self.cache.lengths), [1])
            self.graphs.prepare_all(1, range(2, self.catch_up_step + 1))

    def release(self, slot: int) -> None:
        pass


class SelfDrafter(ModelDrafter):
    """The target with a small selection budget (and optionally fewer layers) over the
    target's own cache: no second model, and the prompt's KV is shared."""

    def __init__(self, target: CausalLM, cache: PagedKVCache, params, generator, *, draft_nsa: NSAConfig,
                 layers: list[int] | None = None):  # fmt: skip
        if target.nsa is None:
            raise ValueError("The self drafter needs an NSA target: run it with --attention nsa.")
        for field in ("cmp_block", "cmp_stride", "sel_block"):
            if getattr(draft_nsa, field) != getattr(target.nsa, field):
                raise ValueError(f"The self drafter must keep the target's {field} ({getattr(target.nsa, field)}).")
        if layers is not None and not all(0 <= i < target.config.num_layers for i in layers):
            raise ValueError(f"Self-draft layers must lie in 0…{target.config.num_layers - 1}, got {layers}.")
        super().__init__(target, cache, params, generator, draft_nsa=draft_nsa, layers=layers)


class DraftModelDrafter(ModelDrafter):
    """A separate smaller model with its own cache."""

    def __init__(self, draft: CausalLM, target: CausalLM, max_seqs: int, max_len: int, params, generator,
                 prefill_chunk: int = 1024):  # fmt: skip
        if draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(
                f"The draft model's vocabulary ({draft.config.vocab_size} tokens) differs from the target's "
                f"({target.config.vocab_size}); pick a draft model from the same family."
            )
        super().__init__(draft, draft.new_cache(max_seqs, max_len), params, generator, prefill_chunk=prefill_chunk)
        self.slots: dict[int, int] = {}

    def own_slot(self, slot: int) -> int:
        if slot not in self.slots:
            self.slots[slot] = self.cache.allocate()
        return self.slots[slot]

    def release(self, slot: int) -> None:
        if slot in self.slots:
            self.cache.free(self.slots.pop(slot))
